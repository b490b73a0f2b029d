import { createHash } from 'node:crypto';

/** Stable partition of a key (user or destination domain): the same on every replica and release. */
export function partitionOf(key: string, partitions: number): number {
  return createHash('sha256').update(key.toLowerCase()).digest().readUInt32BE(0) % partitions;
}
