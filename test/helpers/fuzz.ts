/**
 * Settings shared by the property-based fuzz tests (test/unit/fuzz-*.test.ts).
 *
 * FUZZ_RUNS sets the runs of every property (default 2000: each fuzz file stays well under a
 * minute on a small machine); FUZZ_SEED replays a run (default: a fixed seed, so CI is
 * deterministic). `npm run fuzz` runs them with 20 000 runs and a random seed.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';

function positiveInt(raw: string | undefined, fallback: number, name: string): number {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got ${raw}`);
  return n;
}

export const FUZZ_RUNS = positiveInt(process.env.FUZZ_RUNS, 2000, 'FUZZ_RUNS');

/** A fixed seed unless FUZZ_SEED is set ("random" for a new one each run). */
export const FUZZ_SEED =
  process.env.FUZZ_SEED === 'random'
    ? Math.floor(Math.random() * 2 ** 31)
    : positiveInt(process.env.FUZZ_SEED, 20261126, 'FUZZ_SEED');

/** Iterations run per parser, for the report. */
export const iterations = new Map<string, number>();

/**
 * Checks `predicate` on `runs` generated values (fast-check shrinks a failure to a minimal input
 * and prints the seed to replay it) and counts them under `parser`.
 */
export function fuzz<T>(
  parser: string,
  arbitrary: fc.Arbitrary<T>,
  predicate: (value: T) => void,
  runs = FUZZ_RUNS,
): void {
  let count = 0;
  fc.assert(
    fc.property(arbitrary, (value) => {
      count++;
      predicate(value);
    }),
    { numRuns: runs, seed: FUZZ_SEED },
  );
  iterations.set(parser, (iterations.get(parser) ?? 0) + count);
}

/** One line per parser, e.g. "smtp parseCommand: 1200 iterations (seed 20261126)". */
export function iterationReport(): string {
  return [...iterations]
    .map(([parser, n]) => `${parser}: ${n} iterations`)
    .concat(`seed ${FUZZ_SEED}, FUZZ_RUNS ${FUZZ_RUNS}`)
    .join('\n');
}

/** Arbitrary bytes, biased towards the ones that matter to line-based protocols. */
export function protocolBytes(maxLength = 300): fc.Arbitrary<Buffer> {
  const special = fc.constantFrom(
    0x00,
    0x0a,
    0x0d,
    0x20,
    0x22,
    0x28,
    0x29,
    0x2e,
    0x7b,
    0x7d,
    0x5c,
    0x80,
    0xff,
  );
  const byte = fc.oneof(
    { weight: 3, arbitrary: fc.integer({ min: 0, max: 255 }) },
    { weight: 2, arbitrary: special },
  );
  return fc.array(byte, { maxLength }).map((bytes) => Buffer.from(bytes));
}

/** Splits `data` into chunks at the given cut points (any chunking a socket could produce). */
export function chunked(data: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => (data.length === 0 ? 0 : c % (data.length + 1))))].sort(
    (a, b) => a - b,
  );
  const out: Buffer[] = [];
  let last = 0;
  for (const p of points) {
    if (p > last) out.push(data.subarray(last, p));
    last = Math.max(last, p);
  }
  if (last < data.length) out.push(data.subarray(last));
  return out;
}

/** An IMAP value as a client reads it: strings (quoted or literal) as bytes. */
export type ReadValue = null | number | Buffer | ReadValue[];

/**
 * A strict reader of the values a server writes (RFC 9051 9: nil, number, quoted, literal,
 * parenthesised list); `joined` also accepts lists written back to back, as in a multipart
 * BODYSTRUCTURE, and atoms.
 */
export class ValueReader {
  readonly #buf: Buffer;
  readonly #lenient: boolean;
  pos = 0;

  constructor(buf: Buffer, joined = false) {
    this.#buf = buf;
    this.#lenient = joined;
  }

  end(): void {
    assert.equal(this.pos, this.#buf.length, 'nothing left over');
  }

  value(): ReadValue {
    const c = this.#buf[this.pos];
    if (c === 0x28) {
      this.pos++;
      const out: ReadValue[] = [];
      while (this.#buf[this.pos] !== 0x29) {
        assert.ok(this.pos < this.#buf.length, 'unbalanced parentheses');
        const joined = this.#lenient && this.#buf[this.pos] === 0x28 && this.#buf[this.pos - 1] === 0x29;
        if (out.length > 0 && !joined) {
          assert.equal(this.#buf[this.pos], 0x20, 'list items are separated by one space');
          this.pos++;
        }
        out.push(this.value());
      }
      this.pos++;
      return out;
    }
    if (c === 0x22) {
      const bytes: number[] = [];
      this.pos++;
      for (;;) {
        const b = this.#buf[this.pos++];
        assert.ok(
          b !== undefined && b !== 0x0d && b !== 0x0a && b !== 0 && b < 0x80,
          'quoted string holds a bad octet',
        );
        if (b === 0x22) return Buffer.from(bytes);
        if (b === 0x5c) bytes.push(this.#buf[this.pos++] as number);
        else bytes.push(b);
      }
    }
    if (c === 0x7b || (c === 0x7e && this.#buf[this.pos + 1] === 0x7b)) {
      const m = /^~?\{(\d+)\}\r\n/.exec(this.#buf.subarray(this.pos, this.pos + 30).toString('latin1'));
      assert.ok(m, 'literal announcement');
      this.pos += m[0].length;
      const size = Number(m[1]);
      assert.ok(this.pos + size <= this.#buf.length, 'literal shorter than announced');
      const data = this.#buf.subarray(this.pos, this.pos + size);
      this.pos += size;
      return data;
    }
    const atom = this.#lenient ? /^[^\s()"{}]+/ : /^(?:NIL|\d+)/;
    const m = atom.exec(this.#buf.subarray(this.pos, this.pos + 200).toString('latin1'));
    assert.ok(
      m,
      `unexpected ${JSON.stringify(this.#buf.subarray(this.pos, this.pos + 10).toString('latin1'))}`,
    );
    this.pos += m[0].length;
    if (m[0] === 'NIL') return null;
    return /^\d+$/.test(m[0]) ? Number(m[0]) : Buffer.from(m[0], 'latin1');
  }
}
