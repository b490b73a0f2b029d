/**
 * The operator's client of the admin HTTP API (services/admin/api.ts). Each call is idempotent as
 * the operator uses it: "already exists" on create and "not found" on delete are outcomes, not
 * errors, so a reconcile interrupted half way can simply run again.
 */

export class AdminError extends Error {
  readonly status: number;
  constructor(status: number, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'AdminError';
    this.status = status;
  }
}

export interface AliasEntry {
  alias: string;
  targets: string[];
}

/** A DKIM key's DNS record, as the admin API returns it (services/admin/dkim.ts). */
export interface DkimRecord {
  selector: string;
  name: string;
  txt: string;
}

/** Storage and message limits (RFC 9208); 0: none, or for a user, the domain's default. */
export interface Limits {
  bytes: number;
  messages: number;
}

export class AdminClient {
  readonly #base: string;
  readonly #token: string;
  readonly #timeoutMs: number;
  /** Users per domain, listed once for a burst of reconciles (a resync of many MailUsers). */
  readonly #users = new Map<string, { at: number; users: Set<string> }>();

  constructor(baseUrl: string, token: string, timeoutMs = 10_000) {
    this.#base = baseUrl;
    this.#token = token;
    this.#timeoutMs = timeoutMs;
  }

  async #call(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; data: Record<string, unknown> }> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    let res: Response;
    try {
      res = await fetch(new URL(path, this.#base), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (err) {
      throw new AdminError(0, `admin API unreachable at ${this.#base}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const data = (await res.json().catch(() => ({}))) as Record<string, unknown>;
    return { status: res.status, data };
  }

  async #expect(
    method: string,
    path: string,
    body: unknown,
    ok: number[],
  ): Promise<{ status: number; data: Record<string, unknown> }> {
    const r = await this.#call(method, path, body);
    if (r.status < 300 || ok.includes(r.status)) return r;
    throw new AdminError(r.status, typeof r.data.error === 'string' ? r.data.error : `HTTP ${r.status}`);
  }

  async listDomains(): Promise<string[]> {
    return ((await this.#expect('GET', '/api/domains', undefined, [])).data.domains as string[]) ?? [];
  }

  /** Adds a hosted domain; true if it was created, false if it was there already. */
  async addDomain(name: string): Promise<boolean> {
    return (await this.#expect('POST', '/api/domains', { name }, [409])).status === 201;
  }

  /** Removes a domain (or a domain alias); false if there was none. 409: it still has users. */
  async removeDomain(name: string): Promise<boolean> {
    return (
      (await this.#expect('DELETE', `/api/domains/${encodeURIComponent(name)}`, undefined, [404])).status ===
      200
    );
  }

  async setCatchAll(domain: string, target: string): Promise<void> {
    await this.#expect('PUT', `/api/domains/${encodeURIComponent(domain)}/catch-all`, { target }, []);
  }

  async addDomainAlias(alias: string, target: string): Promise<void> {
    await this.#expect('POST', `/api/domains/${encodeURIComponent(alias)}/aliases`, { target }, []);
  }

  async listUsers(domain: string): Promise<string[]> {
    const r = await this.#expect('GET', `/api/users?domain=${encodeURIComponent(domain)}`, undefined, []);
    return ((r.data.users as { address: string }[]) ?? []).map((u) => u.address);
  }

  /**
   * Whether the user exists, from a list of its domain at most `maxAgeMs` old. Cheaper than a
   * create that answers 409: the directory hashes the password (scrypt) before it looks.
   */
  async userExists(address: string, maxAgeMs = 10_000): Promise<boolean> {
    const domain = address.slice(address.lastIndexOf('@') + 1);
    let entry = this.#users.get(domain);
    if (!entry || performance.now() - entry.at > maxAgeMs) {
      entry = { at: performance.now(), users: new Set(await this.listUsers(domain)) };
      this.#users.set(domain, entry);
    }
    return entry.users.has(address);
  }

  /** Adds a user; true if created, false if the address existed already (its password is not changed). */
  async addUser(address: string, password: string): Promise<boolean> {
    this.#users.delete(address.slice(address.lastIndexOf('@') + 1));
    return (await this.#expect('POST', '/api/users', { address, password }, [409])).status === 201;
  }

  async setPassword(address: string, password: string): Promise<void> {
    await this.#expect('PUT', `/api/users/${encodeURIComponent(address)}/password`, { password }, []);
  }

  async removeUser(address: string): Promise<boolean> {
    this.#users.delete(address.slice(address.lastIndexOf('@') + 1));
    return (
      (await this.#expect('DELETE', `/api/users/${encodeURIComponent(address)}`, undefined, [404])).status ===
      200
    );
  }

  async listAliases(domain: string): Promise<AliasEntry[]> {
    const r = await this.#expect('GET', `/api/aliases?domain=${encodeURIComponent(domain)}`, undefined, []);
    return (r.data.aliases as AliasEntry[]) ?? [];
  }

  async addAlias(alias: string, targets: string[]): Promise<void> {
    await this.#expect('POST', '/api/aliases', { alias, targets }, []);
  }

  async removeAlias(alias: string): Promise<boolean> {
    return (
      (await this.#expect('DELETE', `/api/aliases/${encodeURIComponent(alias)}`, undefined, [404])).status ===
      200
    );
  }

  async setDomainQuota(domain: string, limits: Limits): Promise<void> {
    await this.#expect('PUT', `/api/domains/${encodeURIComponent(domain)}/quota`, limits, []);
  }

  async setUserQuota(address: string, limits: Limits): Promise<void> {
    await this.#expect('PUT', `/api/users/${encodeURIComponent(address)}/quota`, limits, []);
  }

  /** The domain's DKIM record, or null when it has no key. */
  async getDkim(domain: string): Promise<DkimRecord | null> {
    const r = await this.#expect('GET', `/api/domains/${encodeURIComponent(domain)}/dkim`, undefined, [404]);
    return r.status === 404 ? null : (r.data as unknown as DkimRecord);
  }

  /** Generates a new DKIM key under `selector` (the admin API keeps the private key). */
  async generateDkim(domain: string, selector: string): Promise<DkimRecord> {
    const r = await this.#expect('POST', `/api/domains/${encodeURIComponent(domain)}/dkim`, { selector }, []);
    return r.data as unknown as DkimRecord;
  }
}
