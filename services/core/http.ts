/** The HTTP port every process opens: /healthz (alive), /readyz (dependencies up), /metrics, plus extra routes. */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import { registry } from './metrics.ts';

/** Other threads' metrics, summed with this one's on /metrics (services/core/threads.ts). */
export type MetricSources = () => Promise<MetricObjectWithValues<MetricValue<string>>[][]>;

export type ReadinessCheck = () => string | null;

export type Route = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<boolean>;

export class Health {
  readonly #checks = new Map<string, ReadinessCheck>();
  #draining = false;

  /** A check returns null when ready, or the reason it is not. */
  add(name: string, check: ReadinessCheck): void {
    this.#checks.set(name, check);
  }

  drain(): void {
    this.#draining = true;
  }

  problems(): string[] {
    const out: string[] = [];
    if (this.#draining) out.push('shutting down');
    for (const [name, check] of this.#checks) {
      const p = check();
      if (p) out.push(`${name}: ${p}`);
    }
    return out;
  }
}

export interface HttpServer {
  server: Server;
  port: number;
  addRoute(route: Route): void;
  close(): Promise<void>;
}

export async function startHttp(
  host: string,
  port: number,
  health: Health,
  otherThreads?: MetricSources,
): Promise<HttpServer> {
  const routes: Route[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    void (async () => {
      try {
        if (url.pathname === '/healthz') return send(res, 200, 'ok\n');
        if (url.pathname === '/readyz') {
          const problems = health.problems();
          return problems.length === 0
            ? send(res, 200, 'ready\n')
            : send(res, 503, `${problems.join('\n')}\n`);
        }
        if (url.pathname === '/metrics') {
          res.setHeader('content-type', registry.contentType);
          if (!otherThreads) return send(res, 200, await registry.metrics());
          const all = [await registry.getMetricsAsJSON(), ...(await otherThreads())];
          return send(res, 200, await AggregatorRegistry.aggregate(all).metrics());
        }
        for (const route of routes) if (await route(req, res, url)) return;
        send(res, 404, 'not found\n');
      } catch (err) {
        if (!res.headersSent) send(res, 500, `${(err as Error).message}\n`);
        else res.destroy();
      }
    })();
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    addRoute: (r) => routes.push(r),
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(res: ServerResponse, status: number, body: string): void {
  res.statusCode = status;
  if (!res.hasHeader('content-type')) res.setHeader('content-type', 'text/plain; charset=utf-8');
  res.end(body);
}
