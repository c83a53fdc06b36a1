/**
 * Upstreams that fail on purpose, for the resilience tests, and an app-side
 * client that reports a cut connection instead of throwing. Every upstream
 * counts what it actually received: requests with their bodies (`seen`),
 * TCP connections accepted and closed, so a test asserts what legate sent
 * and what it tore down, not what it claims.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll } from 'vitest';
import YAML from 'yaml';
import { type CliProcess, startCli } from './legate.js';
import { deadPort, listenOnLoopback, startUpstream, type SeenRequest, type Upstream } from './upstream.js';

/** What the upstream does with one request (after reading its whole body). */
export type Fault =
  /** Answers `status` with `body` (default `status-N`, N the request's index). */
  | { readonly kind: 'respond'; readonly status: number; readonly headers?: Readonly<Record<string, string>>; readonly body?: string }
  /** Destroys the connection before any response byte. */
  | { readonly kind: 'reset' }
  /** Sends the head and `partial` of a longer body, then destroys the connection. */
  | { readonly kind: 'reset-mid-body'; readonly partial?: string }
  /** Never answers. */
  | { readonly kind: 'stall' }
  /** Sends the head and `partial` of a longer body, then nothing. */
  | { readonly kind: 'stall-body'; readonly partial?: string }
  /** Sends `chunks` chunks, one every `everyMs`. */
  | { readonly kind: 'slow-body'; readonly chunks: number; readonly everyMs: number }
  /** Answers 200 when the test calls `release()` on the upstream. */
  | { readonly kind: 'hold' };

export const ok: Fault = { kind: 'respond', status: 200 };
export const status = (code: number, headers?: Record<string, string>, body?: string): Fault => ({
  kind: 'respond',
  status: code,
  ...(headers === undefined ? {} : { headers }),
  ...(body === undefined ? {} : { body }),
});
export const reset: Fault = { kind: 'reset' };
export const stall: Fault = { kind: 'stall' };

/** Chooses the fault for the request with index `n` (0-based, in arrival order). */
export type Script = (n: number, req: SeenRequest) => Fault;

/** Request n gets `faults[n]`; requests past the end get the last one. */
export function sequence(...faults: Fault[]): Script {
  if (faults.length === 0) throw new Error('sequence needs at least one fault');
  return (n) => faults[Math.min(n, faults.length - 1)] as Fault;
}

export interface FaultyUpstream extends Upstream {
  /** TCP connections accepted, and how many of them have closed (server side). */
  readonly connections: { accepted: number; closed: number };
  /** performance.now() at the arrival of each request, by index. */
  readonly arrivedAt: number[];
  /** Answers every request held by a `hold` fault (200 `released`). */
  release(): void;
}

/** A real HTTP upstream that behaves as `script` says for each request. */
export async function startFaulty(script: Script): Promise<FaultyUpstream> {
  const connections = { accepted: 0, closed: 0 };
  const arrivedAt: number[] = [];
  const held: http.ServerResponse[] = [];
  const upstream = await startUpstream((req, res, _body, n) => {
    arrivedAt[n] = performance.now();
    const seen = upstream.seen[n] as SeenRequest;
    const fault = script(n, seen);
    const cut = (): void => {
      res.socket?.destroy();
    };
    switch (fault.kind) {
      case 'respond': {
        const body = fault.body ?? `status-${n}`;
        res.writeHead(fault.status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), ...fault.headers });
        res.end(body);
        return;
      }
      case 'reset':
        req.socket.destroy();
        return;
      case 'reset-mid-body':
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 100_000 });
        // Destroy only once the head and the partial body are on the wire.
        res.write(fault.partial ?? 'partial', () => setImmediate(cut));
        return;
      case 'stall':
        return;
      case 'stall-body':
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 100_000 });
        res.write(fault.partial ?? 'partial');
        return;
      case 'slow-body': {
        res.writeHead(200, { 'content-type': 'text/plain' });
        let sent = 0;
        const timer = setInterval(() => {
          sent++;
          if (sent >= fault.chunks) {
            clearInterval(timer);
            res.end(`chunk-${sent}\n`);
          } else res.write(`chunk-${sent}\n`);
        }, fault.everyMs);
        res.on('close', () => clearInterval(timer));
        return;
      }
      case 'hold':
        held.push(res);
        return;
    }
  });
  upstream.server.on('connection', (s: Socket) => {
    connections.accepted++;
    s.on('close', () => connections.closed++);
  });
  return {
    ...upstream,
    connections,
    arrivedAt,
    release() {
      for (const res of held.splice(0)) if (!res.destroyed) res.end('released');
    },
  };
}

export interface Resetter {
  readonly port: number;
  readonly url: string;
  /** Connections accepted (each one destroyed at once). */
  accepted(): number;
  close(): Promise<void>;
}

/** A TCP server that accepts every connection and destroys it at once: a dead upstream that can be counted. */
export async function startResetter(): Promise<Resetter> {
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted++;
    socket.destroy();
  });
  const port = await listenOnLoopback(server);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    accepted: () => accepted,
    async close() {
      server.close();
      if (server.listening) await once(server, 'close');
    },
  };
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** What the app saw: the head (when one came), the bytes, and whether the body ended or the connection was cut. */
export interface Outcome {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  /** True when the response ended normally; false when the connection was cut. */
  readonly complete: boolean;
  /** The error that cut the exchange, if any. */
  readonly error: string | undefined;
  /** ms from sending the request to the end or the cut. */
  readonly ms: number;
  /** The body parsed as JSON (legate's own answers). */
  json<T = Record<string, unknown>>(): T;
}

export interface SendOptions {
  readonly port: number;
  readonly path: string;
  readonly method?: string;
  readonly headers?: Readonly<Record<string, string | string[]>>;
  /** A Buffer is sent with Content-Length; `chunked: true` sends it in chunks without one. */
  readonly body?: Buffer | string;
  readonly chunked?: boolean;
}

/** Sends one request and never rejects: a reset before or after the head is part of the outcome. */
export function send(opts: SendOptions): Promise<Outcome> {
  const started = performance.now();
  return new Promise((resolve) => {
    let status = 0;
    let headers: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    let settled = false;
    const done = (complete: boolean, error?: Error): void => {
      if (settled) return;
      settled = true;
      const text = Buffer.concat(chunks).toString('utf8');
      resolve({
        status,
        headers,
        body: text,
        complete,
        error: error === undefined ? undefined : ((error as NodeJS.ErrnoException).code ?? error.message),
        ms: performance.now() - started,
        json: <T>() => JSON.parse(text) as T,
      });
    };
    const body = opts.body === undefined ? undefined : Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(opts.body);
    const reqHeaders: Record<string, string | string[] | number> = { ...opts.headers };
    if (body !== undefined && opts.chunked !== true) reqHeaders['content-length'] = body.length;
    const req = http.request(
      { host: '127.0.0.1', port: opts.port, method: opts.method ?? 'GET', path: opts.path, headers: reqHeaders, agent: false },
      (res) => {
        status = res.statusCode ?? 0;
        headers = res.headers;
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => done(res.complete));
        res.on('error', (e) => done(false, e));
        res.on('close', () => done(res.complete));
      },
    );
    req.on('error', (e) => done(false, e));
    if (body === undefined) req.end();
    else if (opts.chunked === true) {
      // Several writes so the body really travels as chunks.
      const step = 64 * 1024;
      for (let i = 0; i < body.length; i += step) req.write(body.subarray(i, i + step));
      req.end();
    } else req.end(body);
  });
}

/** Sends `count` requests, `concurrency` at a time; outcomes in request order. */
export async function sendMany(count: number, concurrency: number, make: (i: number) => SendOptions): Promise<Outcome[]> {
  const out = new Array<Outcome>(count);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      out[i] = await send(make(i));
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return out;
}

/** routes.yaml text for a test: ephemeral ports, the given routes. */
export function routesYaml(routes: ReadonlyArray<Record<string, unknown>>, extra: Record<string, unknown> = {}): string {
  return YAML.stringify({ listen: '127.0.0.1:0', admin: '127.0.0.1:0', ...extra, routes });
}

/** Closes everything registered, last first; for try/finally in tests that run concurrently. */
export class Cleanup {
  readonly #closers: Array<() => Promise<unknown>> = [];
  add<T extends { close(): Promise<unknown> } | { stop(): Promise<unknown> }>(thing: T): T {
    this.#closers.push(() => ('close' in thing ? thing.close() : thing.stop()));
    return thing;
  }
  async run(): Promise<void> {
    for (const c of this.#closers.splice(0).reverse()) await c();
  }
}

/**
 * Gives each route of a table its own name and path (`c0`, `/c0`, …) so
 * one legate serves every case, each case with its own route state and its
 * own upstream: the cases stay independent without a process each.
 */
export function caseRoutes(routes: ReadonlyArray<Record<string, unknown>>): Array<Record<string, unknown>> {
  return routes.map((r, i) => ({ ...r, name: `c${i}`, match: { pathPrefix: `/c${i}` } }));
}

/** The request path that reaches case `i` of `caseRoutes`. */
export function casePath(i: number): string {
  return `/c${i}/x`;
}

/**
 * One legate (the real CLI) for a table: case i gets its own upstream
 * (`faults(i)`, or a refused port when that returns undefined) and its own
 * route (`routeFor(i, url)`) at `casePath(i)`.
 */
export function table(
  count: number,
  faults: (i: number) => Fault[] | undefined,
  routeFor: (i: number, url: string) => Record<string, unknown>,
  extra: Record<string, unknown> = {},
): { cli: () => CliProcess; up: (i: number) => FaultyUpstream } {
  const cleanup = new Cleanup();
  const ups: Array<FaultyUpstream | undefined> = [];
  let cli: CliProcess | undefined;
  beforeAll(async () => {
    const started = await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        const f = faults(i);
        const up = f === undefined ? undefined : cleanup.add(await startFaulty(sequence(...f)));
        return { up, url: up?.url ?? `http://127.0.0.1:${await deadPort()}` };
      }),
    );
    ups.push(...started.map((s) => s.up));
    const urls = started.map((s) => s.url);
    cli = cleanup.add(await startCli(routesYaml(caseRoutes(urls.map((url, i) => routeFor(i, url))), extra)));
  });
  afterAll(() => cleanup.run());
  return {
    cli: () => {
      if (cli === undefined) throw new Error('legate did not start');
      return cli;
    },
    up: (i) => {
      const up = ups[i];
      if (up === undefined) throw new Error(`case ${i} has no upstream`);
      return up;
    },
  };
}
