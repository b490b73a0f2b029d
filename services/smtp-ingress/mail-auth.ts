/**
 * SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489) checks of mail arriving on port 25, with
 * mailauth, through the configured DNS servers. The results become an Authentication-Results
 * header (RFC 8601) and, for a DMARC failure under p=reject, a 550 5.7.1 (RFC 7489 6.6.2).
 */
import { Resolver } from 'node:dns/promises';
import { authenticate, type DNSResolver } from 'mailauth';

export interface MailAuthInput {
  body: Buffer;
  ip: string;
  helo: string;
  /** MAIL FROM address ('' for the null sender). */
  sender: string;
  /** Our host name: the authserv-id of the header. */
  hostname: string;
}

export interface MailAuthOutcome {
  /** Header lines to prepend (Received-SPF, Authentication-Results), each ending in CRLF. */
  headers: string;
  spf: string;
  dkim: string;
  dmarc: string;
  /** The author domain's DMARC policy asks for rejection and the message failed DMARC. */
  dmarcReject: boolean;
  fromDomain: string;
}

type ResolveFn = DNSResolver;

/** A resolver for mailauth bound to `servers` (host[:port]), each lookup bounded in time. */
export function dnsResolver(servers: string[], timeoutMs: number): ResolveFn {
  const r = new Resolver({ timeout: timeoutMs, tries: 1 });
  if (servers.length > 0) r.setServers(servers);
  return (name, rrtype) => r.resolve(name, rrtype as 'TXT') as Promise<string[][]>;
}

interface AuthResult {
  headers?: string;
  spf?: { status?: { result?: string } } | false;
  dkim?: { results?: { status?: { result?: string } }[] };
  dmarc?: { status?: { result?: string; header?: { from?: string } }; policy?: string } | false;
}

export async function checkMailAuth(input: MailAuthInput, resolver: ResolveFn): Promise<MailAuthOutcome> {
  const res = (await authenticate(input.body, {
    ip: input.ip,
    helo: input.helo,
    sender: input.sender,
    mta: input.hostname,
    resolver,
    disableArc: true,
    disableBimi: true,
  })) as AuthResult;
  const dkimResults = res.dkim?.results ?? [];
  const dmarc = res.dmarc || undefined;
  const dmarcResult = dmarc?.status?.result ?? 'none';
  const headers = (res.headers ?? '').replace(/\r?\n/g, '\r\n');
  return {
    headers: headers && !headers.endsWith('\r\n') ? `${headers}\r\n` : headers,
    spf: (res.spf && res.spf.status?.result) || 'none',
    dkim: dkimResults.find((d) => d.status?.result === 'pass')
      ? 'pass'
      : (dkimResults[0]?.status?.result ?? 'none'),
    dmarc: dmarcResult,
    dmarcReject: dmarcResult === 'fail' && dmarc?.policy === 'reject',
    fromDomain: dmarc?.status?.header?.from ?? '',
  };
}
