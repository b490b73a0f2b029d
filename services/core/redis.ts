import { Cluster, Redis } from 'ioredis';
import type { Logger } from 'pino';

export type { Redis };

/**
 * REDIS_URL names one server, or several (comma-separated) for a Redis Cluster: then they are the
 * seed nodes, and `?cluster=true` on a single URL asks for cluster mode with one seed. Every key of
 * a user (and of a blob) carries a hash tag, so each script touches one slot.
 */
export function isClusterUrl(url: string): boolean {
  const parts = url.split(',').filter((p) => p.trim());
  return parts.length > 1 || /[?&]cluster=(1|true|yes)\b/i.test(url);
}

/**
 * Connects to Redis (RESP2, reconnecting forever with a capped backoff). A Redis Cluster client is
 * returned under the same type: it has the same command and script API (multi-key commands must
 * stay within one hash slot).
 */
export async function connectRedis(url: string, logger: Logger): Promise<Redis> {
  const retryStrategy = (times: number) => Math.min(times * 200, 2000);
  let redis: Redis;
  if (isClusterUrl(url)) {
    const nodes = url
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean)
      .map((p) => {
        const u = new URL(p);
        return { host: u.hostname, port: Number(u.port || 6379) };
      });
    const first = new URL(url.split(',')[0]?.trim() ?? '');
    const cluster = new Cluster(nodes, {
      lazyConnect: true,
      enableOfflineQueue: true,
      clusterRetryStrategy: retryStrategy,
      redisOptions: {
        protocol: 2,
        maxRetriesPerRequest: 3,
        username: decodeURIComponent(first.username) || undefined,
        password: decodeURIComponent(first.password) || undefined,
        tls: first.protocol === 'rediss:' ? {} : undefined,
      },
    });
    redis = cluster as unknown as Redis;
  } else {
    redis = new Redis(url, {
      protocol: 2,
      lazyConnect: true,
      maxRetriesPerRequest: 3,
      enableOfflineQueue: true,
      retryStrategy,
    });
  }
  let lastError = '';
  redis.on('error', (err: Error) => {
    // ioredis repeats the same error on every reconnect attempt: log each distinct one once.
    if (err.message !== lastError) logger.warn({ err }, 'redis error');
    lastError = err.message;
  });
  redis.on('ready', () => {
    lastError = '';
  });
  await redis.connect();
  return redis;
}
