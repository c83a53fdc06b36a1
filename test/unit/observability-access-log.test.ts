/**
 * The access line (SPEC §9): its fields from a finished request, the
 * early-answer shape, where lines go, and the exact byte counters.
 */
import { once } from 'node:events';
import { existsSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import http, { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Socket } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import { RequestContext } from '../../src/proxy/context.js';
import {
  ACCESS_MESSAGE,
  accessLine,
  BODY_BYTES,
  bytesIn,
  bytesOut,
  CountingIncomingMessage,
  CountingServerResponse,
  createAccessLog,
} from '../../src/observability/access-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { createObserver } from '../../src/observability/observer.js';
import { createEndpoint, LayerState, RouteRuntime } from '../../src/runtime/route-runtime.js';
import type { EarlyOutcome } from '../../src/server/proxy-listener.js';
import { LogSink, tempDir, waitFor } from '../helpers/legate.js';

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

// These tests never forward; a connection pool of any kind would only need closing.
const noAgent = (): never => {
  throw new Error('no upstream connections in this test');
};

function route(yamlRoute = 'name: api\n    match: { pathPrefix: /api }\n    upstream: http://10.0.0.7:8080\n    optOut: [log, retry]'): RouteRuntime {
  const loaded = loadConfigText(`routes:\n  - ${yamlRoute}\n`, '/tmp/routes.yaml');
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
  const settings = loaded.config.routes[0];
  if (settings === undefined) throw new Error('no route');
  const endpoints = settings.upstream.endpoints.map((e) => createEndpoint(e, noAgent));
  return new RouteRuntime(settings, endpoints, new LayerState());
}

/** A context as the listener builds it, over an unconnected socket. */
function context(headers: Record<string, string> = {}, method = 'GET'): RequestContext {
  const raw = new IncomingMessage(new Socket());
  raw.method = method;
  raw.url = '/api/orders?token=abc';
  raw.headers = headers;
  const res = new ServerResponse(raw);
  return new RequestContext({
    id: 'req-1',
    raw,
    res,
    route: route(),
    path: '/api/orders',
    forwardPath: '/orders?token=abc',
    headers: {},
    trustControlHeaders: true,
    startedAt: 1_000,
  });
}

describe('accessLine', () => {
  it('reports every field of a routed request, the tries as recorded, and never the query', () => {
    const ctx = context({ 'content-length': '5' });
    ctx.raw.complete = true;
    ctx.tries.push({ endpoint: '10.0.0.7:8080', status: 503, ms: 2.5, retryReason: '503' });
    ctx.tries.push({ endpoint: '10.0.0.8:8080', status: 200, ms: 1.25 });
    ctx.status = 200;
    ctx.upstreamMs = 1.2504;
    ctx.policy.optOut.add('retry');
    ctx.policy.optOutDenied.push('circuit-breaker');
    const line = accessLine(ctx, 1_012.3456);
    expect(line).toEqual({
      requestId: 'req-1',
      method: 'GET',
      path: '/api/orders',
      route: 'api',
      upstream: '10.0.0.8:8080',
      status: 200,
      attempts: 2,
      durationMs: 12.346,
      upstreamMs: 1.25,
      bytesIn: 5,
      bytesOut: null,
      error: null,
      optOut: ['retry'],
      optOutDenied: ['circuit-breaker'],
      tries: [
        { endpoint: '10.0.0.7:8080', status: 503, ms: 2.5, retryReason: '503' },
        { endpoint: '10.0.0.8:8080', status: 200, ms: 1.25 },
      ],
    });
    expect(JSON.stringify(line)).not.toContain('token');
  });

  it('says null, not a guess, for what it cannot know', () => {
    const ctx = context({ 'transfer-encoding': 'chunked' });
    ctx.status = 502;
    ctx.errorCode = 'upstream-connect-failure';
    const line = accessLine(ctx, 1_001);
    expect(line).toMatchObject({ upstream: null, attempts: 0, upstreamMs: null, bytesIn: null, bytesOut: null, error: 'upstream-connect-failure', tries: [] });
    // No try, but an endpoint was chosen (its breaker answered): that is the upstream in question.
    ctx.endpoint = ctx.route.balancer.endpoints[0];
    ctx.errorCode = 'circuit-open';
    expect(accessLine(ctx, 1_001)).toMatchObject({ upstream: '10.0.0.7:8080', attempts: 0, error: 'circuit-open' });
    // Complete without a body header: there was no body.
    const bodiless = context();
    bodiless.raw.complete = true;
    expect(bytesIn(bodiless)).toBe(0);
    // A HEAD response has no body, whatever was written.
    const head = context({}, 'HEAD');
    head.appResponse.writeHead(200, { 'content-length': '10' });
    expect(bytesOut(head)).toBe(0);
  });

  it('reads the exact counts when the listener uses the counting classes', () => {
    const ctx = context({ 'transfer-encoding': 'chunked' });
    (ctx.raw as unknown as CountingIncomingMessage)[BODY_BYTES] = 4096;
    (ctx.appResponse as unknown as CountingServerResponse)[BODY_BYTES] = 17;
    expect([bytesIn(ctx), bytesOut(ctx)]).toEqual([4096, 17]);
  });

  it('reports a request answered before routing with its code and no route', () => {
    const early: EarlyOutcome = { early: true, id: 'e-1', method: 'CONNECT', path: 'db.internal:5432', status: 405, errorCode: 'connect-unsupported', startedAt: 10, bytesOut: 180 };
    expect(accessLine(early, 10.5)).toEqual({
      requestId: 'e-1',
      method: 'CONNECT',
      path: 'db.internal:5432',
      route: null,
      upstream: null,
      status: 405,
      attempts: 0,
      durationMs: 0.5,
      upstreamMs: null,
      bytesIn: null,
      bytesOut: 180,
      error: 'connect-unsupported',
      optOut: [],
      optOutDenied: [],
      tries: [],
    });
  });
});

describe('the observer writes access lines', () => {
  it('writes one line per request, in legate\'s line shape and at info even when the logger is at warn; none when the request opted out', async () => {
    const sink = new LogSink();
    const observer = createObserver(pino({ level: 'warn' }, sink));
    cleanups.push(() => observer.close());
    const logged = context();
    logged.status = 200;
    observer.onComplete(logged);
    const quiet = context();
    quiet.policy.optOut.add('log');
    quiet.status = 200;
    observer.onComplete(quiet);
    await waitFor(() => (sink.lines.length > 0 ? true : undefined), 'an access line');
    expect(sink.lines).toHaveLength(1);
    expect(sink.lines[0]).toMatchObject({ msg: ACCESS_MESSAGE, requestId: 'req-1', level: 'info', service: 'legate' });
  });

  it('never throws into the request path, and says once that recording failed', () => {
    const sink = new LogSink();
    const observer = createObserver(pino({ level: 'info' }, sink));
    cleanups.push(() => observer.close());
    const broken = { id: 'x', startedAt: 0 } as unknown as RequestContext;
    expect(() => observer.onComplete(broken)).not.toThrow();
    expect(sink.lines.some((l) => l.msg === 'could not record a request' && l.requestId === 'x')).toBe(true);
  });

  it('appends to the file `accessLog` names, in the main log format, and closes it flushed', async () => {
    const file = path.join(tempDir(), 'logs', 'access.log');
    const main: string[] = [];
    const logger = createLogger({
      level: 'info',
      destination: new Writable({
        write(chunk: Buffer, _enc, cb) {
          main.push(chunk.toString());
          cb();
        },
      }),
    });
    const access = createAccessLog(logger, file);
    for (let i = 0; i < 100; i++) {
      const ctx = context();
      ctx.status = 200;
      access.write(accessLine(ctx, 1_001));
    }
    await access.close();
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(100);
    expect(lines[0]).toMatchObject({ level: 'info', service: 'legate', msg: ACCESS_MESSAGE, route: 'api', status: 200 });
    expect(typeof lines[0]?.time).toBe('string');
    expect(main).toEqual([]);
  });

  // /dev/full takes the open and fails every write with ENOSPC, as a full disk does (a device: written asynchronously).
  it.runIf(existsSync('/dev/full'))('reports a destination that refuses writes once, holds at most the bound, and closes it', async () => {
    const main = new LogSink();
    const access = createAccessLog(pino({ level: 'info' }, main), '/dev/full', { heldLimit: 16 * 1024 });
    const errors = () => main.lines.filter((l) => l.level === 50);
    // ~75 KiB of lines while the first batch's write is in flight: 16 KiB are held, the rest dropped.
    for (let i = 0; i < 300; i++) access.write(accessLine(context(), 1_001));
    await waitFor(() => (errors().length > 0 ? true : undefined), 'the failed write reported');
    // More failures within the interval are counted, not reported.
    for (let i = 0; i < 40; i++) access.write(accessLine(context(), 1_001));
    await access.close();
    expect(errors()).toEqual([
      expect.objectContaining({ msg: expect.stringMatching(/^access log write failed/), accessLog: '/dev/full', err: expect.stringContaining('ENOSPC'), failedWrites: 1 }),
      expect.objectContaining({ msg: 'access log closed while writes were failing; the lines it held are lost', accessLog: '/dev/full' }),
    ]);
    // Each report counts what happened since the one before it.
    const counts = errors() as Array<{ failedWrites: number; droppedLines: number }>;
    expect(counts[1]?.failedWrites).toBeGreaterThanOrEqual(1);
    const dropped = counts.reduce((n, c) => n + c.droppedLines, 0);
    expect(dropped).toBeGreaterThan(100);
    expect(dropped).toBeLessThan(340);
  });

  it.runIf(existsSync('/dev/full'))('reports failing writes again once the interval has passed', async () => {
    const main = new LogSink();
    const access = createAccessLog(pino({ level: 'info' }, main), '/dev/full', { reportEveryMs: 0 });
    cleanups.push(() => access.close());
    const reports = () => main.lines.filter((l) => l.level === 50 && String(l.msg).startsWith('access log write failed')).length;
    for (let round = 1; round <= 3; round++) {
      for (let i = 0; i < 30; i++) access.write(accessLine(context(), 1_001));
      await waitFor(() => (reports() >= round ? true : undefined), `report ${round}`);
    }
  });

  it('refuses a file it cannot open, naming the file and why', () => {
    const under = path.join(tempDir(), 'file');
    writeFileSync(under, '');
    const file = path.join(under, 'access.log');
    expect(() => createAccessLog(pino({ level: 'info' }, new LogSink()), file)).toThrow(`accessLog: cannot open ${file}: ENOTDIR`);
  });

  it('says so when a folder on the way is a symbolic link to nothing', () => {
    const dir = tempDir();
    symlinkSync(path.join(dir, 'gone'), path.join(dir, 'logs'));
    const file = path.join(dir, 'logs', 'app', 'access.log');
    expect(() => createAccessLog(pino({ level: 'info' }, new LogSink()), file)).toThrow(
      `accessLog: cannot open ${file}: ${path.join(dir, 'logs')} is a symbolic link to ${path.join(dir, 'gone')}, which does not exist`,
    );
  });
});

describe('exact body byte counters', () => {
  it('count chunked and Content-Length bodies both ways without a data listener', async () => {
    const server = http.createServer({ IncomingMessage: CountingIncomingMessage, ServerResponse: CountingServerResponse }, (req, res) => {
      req.resume();
      req.on('end', () => {
        // Chunked: two writes and a last chunk in end().
        res.write('abc');
        res.write(Buffer.from('defg'));
        res.end('hij', () => undefined);
      });
      res.on('finish', () => {
        seen.push({ in: (req as CountingIncomingMessage)[BODY_BYTES], out: (res as CountingServerResponse)[BODY_BYTES] });
      });
    });
    const seen: Array<{ in: number; out: number }> = [];
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as AddressInfo).port;
    const send = (body: string[], headers: Record<string, string>) =>
      new Promise<void>((resolve, reject) => {
        const req = http.request({ port, host: '127.0.0.1', method: 'POST', headers, agent: false }, (res) => {
          res.resume();
          res.on('end', resolve);
        });
        req.on('error', reject);
        for (const b of body) req.write(b);
        req.end();
      });
    await send(['x'.repeat(1000), 'y'.repeat(24)], { 'transfer-encoding': 'chunked' });
    await send(['z'.repeat(300)], { 'content-length': '300' });
    await waitFor(() => (seen.length === 2 ? true : undefined), 'both responses');
    expect(seen).toEqual([
      { in: 1024, out: 10 },
      { in: 300, out: 10 },
    ]);
  });
});
