/**
 * The access line's fast path writes exactly the bytes pino would: every
 * line here is written both ways, through `createAccessLog` and through a
 * pino logger with the access log's options (`info(line, 'access')`, as
 * legate wrote it before the fast path), and the two must be identical,
 * string for string. A change to pino, to `loggerOptions()` or to the line's
 * shape that the fast path does not follow fails here.
 */
import { readFileSync } from 'node:fs';
import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import path from 'node:path';
import { getHeapSpaceStatistics } from 'node:v8';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import { RequestContext } from '../../src/proxy/context.js';
import { frameOf, jsonNumber, quote } from '../../src/observability/access-json.js';
import { ACCESS_MESSAGE, accessLine, createAccessLog, lineWriter, type AccessLine } from '../../src/observability/access-log.js';
import { createLogger, isoTimeCached, loggerOptions } from '../../src/observability/logger.js';
import { createEndpoint, LayerState, RouteRuntime } from '../../src/runtime/route-runtime.js';
import type { EarlyOutcome } from '../../src/server/proxy-listener.js';
import { tempDir } from '../helpers/legate.js';

/** A destination that keeps each write as pino hands it over (a string). */
class Capture {
  readonly writes: string[] = [];
  write(s: string): boolean {
    this.writes.push(s);
    return true;
  }
}

/** What pino itself writes for these lines with the access log's options. */
function viaPino(lines: readonly AccessLine[]): string[] {
  const sink = new Capture();
  const reference = pino(loggerOptions('info', { redact: false }), sink);
  for (const l of lines) reference.info(l, ACCESS_MESSAGE);
  return sink.writes;
}

/** What legate's access log writes for them to the main logger's stream. */
function viaAccessLog(lines: readonly AccessLine[], level = 'info'): string[] {
  const sink = new Capture();
  const access = createAccessLog(createLogger({ level, destination: sink }));
  for (const l of lines) access.write(l);
  return sink.writes;
}

const noAgent = (): never => {
  throw new Error('no upstream connections in this test');
};

function route(): RouteRuntime {
  const loaded = loadConfigText('routes:\n  - name: api\n    match: { pathPrefix: /api }\n    upstream: http://10.0.0.7:8080\n    optOut: [log, retry, circuit-breaker]\n', '/tmp/r.yaml');
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
  const settings = loaded.config.routes[0];
  if (settings === undefined) throw new Error('no route');
  return new RouteRuntime(settings, settings.upstream.endpoints.map((e) => createEndpoint(e, noAgent)), new LayerState());
}

function context(id: string, path: string, method = 'GET'): RequestContext {
  const raw = new IncomingMessage(new Socket());
  raw.method = method;
  raw.headers = {};
  return new RequestContext({ id, raw, res: new ServerResponse(raw), route: route(), path, forwardPath: path, headers: {}, trustControlHeaders: true, startedAt: 1_000 });
}

/** A line in `accessLine()`'s key order with some values replaced (spread keeps the base's order). */
function line(overrides: Partial<AccessLine> = {}): AccessLine {
  const base: AccessLine = {
    requestId: '3f2a9c1e-8b7d-4e6f-a1b2-000000000001',
    method: 'GET',
    path: '/api/orders',
    route: 'api',
    upstream: '10.0.0.7:8080',
    status: 200,
    attempts: 1,
    durationMs: 0.412,
    upstreamMs: 0.301,
    bytesIn: 0,
    bytesOut: 1834,
    error: null,
    optOut: [],
    optOutDenied: [],
    tries: [{ endpoint: '10.0.0.7:8080', ms: 0.301, status: 200 }],
  };
  return { ...base, ...overrides };
}

// Deterministic, so a failure names a line that can be reproduced.
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1_664_525) + 1_013_904_223) >>> 0;
    return s / 2 ** 32;
  };
}

// Quotes, backslashes, controls, DEL, Latin-1, line separators, astral pairs and lone surrogates.
const ALPHABET = ['a', 'Z', '0', '/', ' ', '"', '\\', '\n', '\t', '\u0000', '\u001f', '\u007f', 'é', '\u2028', '日', '😀', '\ud800', '\udc00', '%', '{'];

function randomString(next: () => number, maxLength: number): string {
  const n = Math.floor(next() * (maxLength + 1));
  let s = '';
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(next() * ALPHABET.length)] ?? '';
  return s;
}

beforeEach(() => {
  // One millisecond for the whole test, so both ways carry the same time.
  vi.useFakeTimers({ toFake: ['Date'], now: new Date('2026-11-23T09:00:00.123Z') });
});
afterEach(() => {
  vi.useRealTimers();
});

describe('the access line fast path', () => {
  it('writes what pino writes for lines built from requests, routed and early', () => {
    const retried = context('req-1', '/api/orders', 'POST');
    retried.tries.push({ endpoint: '10.0.0.7:8080', status: 503, ms: 2.5, retryReason: '503' });
    retried.tries.push({ endpoint: '10.0.0.7:8080', error: 'upstream-reset', ms: 0.75, retryReason: 'reset' });
    retried.tries.push({ endpoint: '10.0.0.8:8080', status: 200, ms: 1.25 });
    retried.status = 200;
    retried.upstreamMs = 1.2504;
    retried.policy.optOut.add('retry');
    retried.policy.optOut.add('circuit-breaker');
    retried.policy.optOutDenied.push('log');
    const failed = context('req-2', '/api/x');
    failed.status = 502;
    failed.errorCode = 'upstream-connect-failure';
    const early: EarlyOutcome = { early: true, id: 'e-1', method: 'CONNECT', path: 'db.internal:5432', status: 405, errorCode: 'connect-unsupported', startedAt: 10, bytesOut: 180 };
    const lines = [accessLine(retried, 1_012.3456), accessLine(failed, 1_000.25), accessLine(early, 10.5)];
    const ours = viaAccessLog(lines);
    expect(ours).toEqual(viaPino(lines));
    expect(ours[0]).toMatch(/^\{"level":"info","time":"2026-11-23T09:00:00\.123Z","service":"legate","requestId":"req-1",.*,"msg":"access"\}\n$/);
  });

  it('writes what pino writes for strings that need escaping, unicode, nulls and odd numbers', () => {
    const long = 'x'.repeat(95);
    const lines = [
      line({ requestId: 'a"b\\c', path: '/api/"quoted"/back\\slash' }),
      line({ path: '/api/new\nline\ttab\u0000nul\u001fus\u007fdel' }),
      line({ path: '/api/é/日本/😀/\u2028/\u2029' }),
      // pino leaves a lone surrogate as it is in a short string and escapes it in a long one.
      line({ requestId: 'lone-\ud800', path: `/api/${long}\ud800` }),
      line({ path: `/api/${long}"\\"` }),
      line({ path: `/${'y'.repeat(99)}`, requestId: '' }),
      line({ route: null, upstream: null, upstreamMs: null, bytesIn: null, bytesOut: null, error: null, attempts: 0, tries: [] }),
      line({ error: 'upstream-timeout', status: 504, upstream: '[::1]:8443' }),
      line({ durationMs: 0, upstreamMs: -0, bytesIn: 1e21, bytesOut: Number.MAX_SAFE_INTEGER, status: 0 }),
      line({ durationMs: 1e-7, upstreamMs: 123456.789 }),
      line({ durationMs: Number.NaN, upstreamMs: Number.POSITIVE_INFINITY, bytesIn: Number.NEGATIVE_INFINITY }),
      line({ optOut: ['retry', 'circuit-breaker', 'log'], optOutDenied: ['retry', 'deadline'] }),
      line({
        attempts: 3,
        tries: [
          { endpoint: '10.0.0.7:8080', ms: 0.3, status: 503, retryReason: '503' },
          { endpoint: '10.0.0.7:8080', ms: 1000.5, error: 'upstream-timeout', retryReason: 'timeout' },
          { endpoint: 'h"ost\\:1', ms: 0, status: 200 },
        ],
      }),
      line({ method: 'M\u00e9THOD', route: 'route "with" quotes' }),
    ];
    expect(viaAccessLog(lines)).toEqual(viaPino(lines));
  });

  it('writes what pino writes for a thousand random lines', () => {
    const next = prng(20261123);
    const lines = Array.from({ length: 1000 }, () =>
      line({
        requestId: randomString(next, 40),
        method: randomString(next, 8),
        path: randomString(next, 130),
        route: next() < 0.2 ? null : randomString(next, 20),
        upstream: next() < 0.2 ? null : randomString(next, 30),
        error: next() < 0.5 ? null : randomString(next, 110),
        durationMs: Math.round(next() * 1e6) / 1000,
        optOut: next() < 0.5 ? [] : [randomString(next, 10)],
        tries: next() < 0.3 ? [] : [{ endpoint: randomString(next, 12), ms: next(), status: 200 }],
      }),
    );
    expect(viaAccessLog(lines)).toEqual(viaPino(lines));
  });

  it('drops a field with no value and leaves to pino what JSON.stringify cannot write', () => {
    const cyclic: Record<string, unknown> = { endpoint: 'a:1', ms: 1 };
    cyclic.self = cyclic;
    const lines = [
      // Not what accessLine() builds, but pino drops undefined keys and so must the fast path.
      line({ error: undefined as unknown as null, upstreamMs: undefined as unknown as null }),
      line({ tries: [cyclic as never] }),
      line({ bytesIn: 10n as unknown as number }),
    ];
    expect(viaAccessLog(lines)).toEqual(viaPino(lines));
  });

  it('writes at info whatever the main logger level, and nothing when it is silent', () => {
    const lines = [line()];
    expect(viaAccessLog(lines, 'error')).toEqual(viaPino(lines));
    expect(viaAccessLog(lines, 'silent')).toEqual([]);
  });

  it('keeps lifecycle and access lines in the order they were logged on a shared stream', () => {
    const sink = new Capture();
    const logger = createLogger({ level: 'info', destination: sink });
    const access = createAccessLog(logger);
    logger.info('started');
    access.write(line());
    logger.warn('draining');
    expect(sink.writes.map((w) => (JSON.parse(w) as { msg: string }).msg)).toEqual(['started', ACCESS_MESSAGE, 'draining']);
  });

  it('writes a file access log byte for byte as pino would', async () => {
    const file = path.join(tempDir(), 'access.log');
    const access = createAccessLog(createLogger({ level: 'info', destination: new Capture() }), file);
    const lines = [line(), line({ path: '/api/é😀', route: null }), line({ tries: [] })];
    for (const l of lines) access.write(l);
    await access.close();
    expect(readFileSync(file, 'utf8')).toBe(viaPino(lines).join(''));
  });

  it('bypasses pino for the access log\'s own logger', () => {
    const sink = new Capture();
    const access = pino(loggerOptions('info', { redact: false }), sink);
    const info = vi.spyOn(access, 'info');
    lineWriter(access)(line());
    expect(info).not.toHaveBeenCalled();
    expect(sink.writes).toEqual(viaPino([line()]));
  });

  it('hands lines to pino when the logger does something the fast path does not mirror', () => {
    const options = loggerOptions('info', { redact: false });
    const capture = new Capture();
    const plain = pino(options, capture);
    expect(frameOf(plain, ACCESS_MESSAGE)).toBeDefined();
    expect(frameOf(pino({ ...options, mixin: () => ({ extra: 1 }) }, capture), ACCESS_MESSAGE)).toBeUndefined();
    expect(frameOf(pino({ ...options, formatters: { ...options.formatters, log: (o) => o } }, capture), ACCESS_MESSAGE)).toBeUndefined();
    expect(frameOf(pino({ ...options, serializers: { path: (p: string) => p.toUpperCase() } }, capture), ACCESS_MESSAGE)).toBeUndefined();
    expect(frameOf(pino({ ...options, redact: ['path'] }, capture), ACCESS_MESSAGE)).toBeUndefined();
    expect(frameOf(pino({ ...options, nestedKey: 'payload' }, capture), ACCESS_MESSAGE)).toBeUndefined();
    expect(frameOf(pino({ ...options, msgPrefix: '[x] ' }, capture), ACCESS_MESSAGE)).toBeUndefined();
    // A multistream reads each line's level off the stream: pino must write to it.
    const multi = pino.multistream([{ stream: capture }]);
    expect(frameOf(pino(options, multi), ACCESS_MESSAGE)).toBeUndefined();
    const access = pino(options, multi);
    const info = vi.spyOn(access, 'info');
    lineWriter(access)(line());
    expect(info).toHaveBeenCalledTimes(1);
    expect(capture.writes).toEqual(viaPino([line()]));
  });

  it('leaves no string in the old generation for the numbers of a line', () => {
    // A new duration in every line, as in the proxy. `'' + n` would put each number's string straight in
    // the old generation through V8's number-to-string cache (~28 bytes a number);
    // strings that die young leave it where it was, give or take the code compiled on the way.
    const write = lineWriter(pino(loggerOptions('info', { redact: false }), { write: () => true }));
    const oldSpace = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')?.space_used_size ?? Number.NaN;
    // Durations as legate rounds them (to the microsecond, put together from tables) and finer ones
    // (through JSON.stringify): both must die young.
    const lines = (from: number, n: number): void => {
      for (let i = from; i < from + n; i++) {
        const ms = i % 2 === 0 ? (i % 1_000_000) / 1000 : i / 1000 + 0.0001;
        write(line({ durationMs: ms + 0.1, upstreamMs: ms, tries: [{ endpoint: '10.0.0.7:8080', ms, status: 200 }] }));
      }
    };
    lines(0, 10_000); // compiled and optimised before measuring
    const n = 100_000;
    const before = oldSpace();
    lines(10_000, n);
    const perLine = (oldSpace() - before) / n;
    // ~40 bytes a line through the cache, under 1 without; a mark-compact in between could only lower it.
    expect(perLine).toBeLessThan(10);
  });

  it('writes every number as JSON.stringify does', () => {
    // Every duration the tables write (k/1000 below 1024), then the edges on both sides of them.
    const mismatches: number[] = [];
    for (let k = 0; k < 1_024_000; k++) {
      const n = k / 1000;
      if (jsonNumber(n) !== JSON.stringify(n)) mismatches.push(n);
    }
    const edges = [-0, -1, -0.5, 1023.999, 1023.9995, 1024, 1024.5, 16_384, 0.0001, 0.1 + 0.2, 1 / 3, 1e-7, 1e21, 2 ** 53, Number.MAX_VALUE, Number.MIN_VALUE, NaN, Infinity, -Infinity];
    for (const n of edges) if (jsonNumber(n) !== JSON.stringify(n)) mismatches.push(n);
    expect(mismatches).toEqual([]);
    expect(jsonNumber(27.01)).toBe('27.01');
    expect(jsonNumber(NaN)).toBe('null');
  });

  it('stamps every millisecond as new Date().toISOString() would, across seconds, years and back in time', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const start = Date.parse('2026-12-31T23:59:58.000Z');
      // Two seconds and a year's end, one millisecond at a time, then times out of order, far ahead and before 1970.
      const times = Array.from({ length: 3_001 }, (_, i) => start + i);
      times.push(start + 500, start - 86_400_000, Date.parse('+010000-01-01T00:00:00.001Z'), 8.64e15, 0, -1, -1_000, -1_500, start + 2_999);
      const wrong: string[] = [];
      for (const t of times) {
        vi.setSystemTime(t);
        const expected = `,"time":"${new Date(t).toISOString()}"`;
        const got = isoTimeCached();
        if (got !== expected) wrong.push(`${t}: ${got}`);
      }
      expect(wrong).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
  });

  it('quotes strings as pino does', () => {
    for (const s of ['', 'plain', 'a"b', 'a\\b', '\n', 'é😀', '\ud800', `${'q'.repeat(101)}\ud800`, '\u2028']) {
      const sink = new Capture();
      pino({ base: null, timestamp: false }, sink).info(s);
      expect(`{"level":30,"msg":${quote(s)}}\n`).toBe(sink.writes[0]);
    }
  });
});
