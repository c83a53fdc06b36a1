/**
 * The admin listener: liveness, readiness, the effective config (no secrets)
 * and, once metrics are wired, Prometheus text. Never reachable through the
 * proxy port: it is a separate server on its own address.
 */
import http from 'node:http';
import type { Server, ServerResponse } from 'node:http';

export interface AdminHost {
  ready(): boolean;
  draining(): boolean;
  /** The effective config as JSON-safe data, secrets already redacted. */
  configView(): unknown;
  /** Prometheus exposition; undefined while metrics are not available. */
  metrics?(): Promise<{ contentType: string; body: string }>;
}

function send(res: ServerResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

export function createAdminListener(host: AdminHost): Server {
  return http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      send(res, 405, 'method not allowed\n');
      return;
    }
    switch (path) {
      case '/healthz':
        send(res, 200, 'ok\n');
        return;
      case '/readyz':
        if (host.draining()) send(res, 503, 'draining\n');
        else if (!host.ready()) send(res, 503, 'not ready\n');
        else send(res, 200, 'ready\n');
        return;
      case '/config':
        send(res, 200, JSON.stringify(host.configView(), null, 2) + '\n', 'application/json');
        return;
      case '/metrics': {
        const metrics = host.metrics;
        if (metrics === undefined) {
          send(res, 404, 'metrics are not enabled\n');
          return;
        }
        metrics().then(
          (m) => send(res, 200, m.body, m.contentType),
          (e: unknown) => send(res, 500, `metrics failed: ${(e as Error).message}\n`),
        );
        return;
      }
      default:
        send(res, 404, 'not found: try /healthz, /readyz, /config or /metrics\n');
    }
  });
}
