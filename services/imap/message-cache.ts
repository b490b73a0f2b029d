/**
 * Parsed messages shared by every session of a server. Bodies are content-addressed
 * (`sha256:...`), so an entry never goes stale: the same blob is the same octets. Bounded by
 * count and by octets (least recently used first out); concurrent loads of one blob share one
 * read from the blob store.
 */
import type { ParsedMessage } from './mime-tree.ts';

export interface MessageCacheLimits {
  /** Most parsed messages kept. */
  parsedMessageCache: number;
  /** Most message octets kept. */
  parsedMessageCacheBytes: number;
}

export class MessageCache {
  readonly #limits: MessageCacheLimits;
  readonly #entries = new Map<string, ParsedMessage>();
  readonly #loading = new Map<string, Promise<ParsedMessage>>();
  #bytes = 0;

  constructor(limits: MessageCacheLimits) {
    this.#limits = limits;
  }

  /** The parsed message of `blob`, loaded with `load` when it is not cached. */
  async get(blob: string, load: () => Promise<ParsedMessage>): Promise<ParsedMessage> {
    const cached = this.#entries.get(blob);
    if (cached) {
      this.#entries.delete(blob);
      this.#entries.set(blob, cached);
      return cached;
    }
    const pending = this.#loading.get(blob);
    if (pending) return pending;
    const loading = load().finally(() => this.#loading.delete(blob));
    this.#loading.set(blob, loading);
    const parsed = await loading;
    this.#add(blob, parsed);
    return parsed;
  }

  #add(blob: string, parsed: ParsedMessage): void {
    // One message may not take more than a quarter of the cache.
    if (this.#entries.has(blob) || parsed.raw.length > this.#limits.parsedMessageCacheBytes / 4) return;
    this.#entries.set(blob, parsed);
    this.#bytes += parsed.raw.length;
    while (
      this.#entries.size > this.#limits.parsedMessageCache ||
      this.#bytes > this.#limits.parsedMessageCacheBytes
    ) {
      const oldest = this.#entries.entries().next().value;
      if (!oldest) break;
      this.#entries.delete(oldest[0]);
      this.#bytes -= oldest[1].raw.length;
    }
  }

  /** The parsed message if it is cached, without loading it. */
  peek(blob: string): ParsedMessage | null {
    return this.#entries.get(blob) ?? null;
  }

  get size(): number {
    return this.#entries.size;
  }
}
