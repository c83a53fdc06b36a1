/**
 * Real upstream servers on 127.0.0.1 for tests, counting what they receive.
 */
import http from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo, Server as NetServer, Socket } from 'node:net';
import net from 'node:net';

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface Upstream {
  readonly port: number;
  readonly url: string;
  /** Every request received, in order (bodies fully read before the handler runs, unless `stream`). */
  readonly seen: SeenRequest[];
  readonly server: Server;
  close(): Promise<void>;
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer, n: number) => void | Promise<void>;

/** Echoes method, url, headers and body length as JSON. */
export const echo: UpstreamHandler = (req, res, body) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyBytes: body.length, port: req.socket.localPort }));
};

export async function startUpstream(handler: UpstreamHandler = echo, opts: { stream?: boolean } = {}): Promise<Upstream> {
  const seen: SeenRequest[] = [];
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const n = seen.length;
    const record: SeenRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.alloc(0) };
    seen.push(record);
    if (opts.stream === true) {
      void handler(req, res, Buffer.alloc(0), n);
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      record.body = Buffer.concat(chunks);
      void handler(req, res, record.body, n);
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const port = await listenOnLoopback(server);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    seen,
    server,
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
      if (server.listening) await once(server, 'close');
    },
  };
}

/** Listens on 127.0.0.1 at a port the OS picks, and returns it. */
export async function listenOnLoopback(server: NetServer): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

/** A port free to bind right now (bound then released), for a listener that must be named before it starts. */
export async function freePort(): Promise<number> {
  const s = http.createServer();
  const port = await listenOnLoopback(s);
  s.close();
  await once(s, 'close');
  return port;
}

/**
 * A port on 127.0.0.1 that refuses connections, and keeps refusing: a low
 * (privileged) port that nothing here listens on. A port bound then released
 * would not do: the OS hands released ephemeral ports to the next `listen(0)`
 * of a test running in parallel, which then answers instead of refusing.
 */
export async function deadPort(): Promise<number> {
  for (const port of [9, 19, 47, 93, 201, 401, 603, 787]) {
    if (await refuses(port)) return port;
  }
  throw new Error('no refusing low port found on 127.0.0.1');
}

function refuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}
