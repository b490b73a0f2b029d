/**
 * Parsed messages shared by every session of a server. Bodies are content-addressed
 * (`sha256:...`), so an entry never goes stale: the same blob is the same octets. Bounded by
 * count and by octets (least recently used first out); concurrent loads of one blob share one
 * read from the blob store.
 *
 * Messages stored with their MIME structure (services/core/mime-structure.ts) need no entry here
 * for ENVELOPE, BODY, BODYSTRUCTURE or header SEARCH; postino_imap_body_loads_total counts the
 * bodies read to be parsed, so an operator sees when a folder still costs body reads.
 */
import { counter } from '../core/metrics.ts';
import { parsedWeight } from './mime-tree.ts';
import type { ParsedMessage } from './mime-tree.ts';

const bodyLoads = counter(
  'postino_imap_body_loads_total',
  'Message bodies the IMAP server read from the blob store to parse (cache misses)',
);

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
    bodyLoads.inc();
    const loading = load().finally(() => this.#loading.delete(blob));
    this.#loading.set(blob, loading);
    const parsed = await loading;
    this.#add(blob, parsed);
    return parsed;
  }

  #add(blob: string, parsed: ParsedMessage): void {
    // One message may not take more than a quarter of the cache. Its parsed tree counts too: a
    // message of many short header lines costs far more parsed than its octets.
    const weight = parsedWeight(parsed);
    if (this.#entries.has(blob) || weight > this.#limits.parsedMessageCacheBytes / 4) return;
    this.#entries.set(blob, parsed);
    this.#bytes += weight;
    while (
      this.#entries.size > this.#limits.parsedMessageCache ||
      this.#bytes > this.#limits.parsedMessageCacheBytes
    ) {
      const oldest = this.#entries.entries().next().value;
      if (!oldest) break;
      this.#entries.delete(oldest[0]);
      this.#bytes -= parsedWeight(oldest[1]);
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
