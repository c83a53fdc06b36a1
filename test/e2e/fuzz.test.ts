/**
 * Randomised hostile requests against the real CLI for a bounded time: request
 * lines, header names and values, framing, control-header values, pipelining
 * and truncation, from a seeded generator so that a failure reproduces
 * (`LEGATE_FUZZ_SEED=<seed> npx vitest run test/e2e/fuzz.test.ts`; the seed
 * and the exact bytes are in every failure message; `LEGATE_FUZZ_MS` runs it longer).
 *
 * Every exchange must end in well-formed HTTP/1.1 responses (status line,
 * headers, a body of exactly its framed length) or a clean close; the
 * process must stay up; and whatever reached the upstream must be a request
 * legate framed itself (its Host and x-request-id), never one smuggled in a body.
 */
import net from 'node:net';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { routesYaml } from '../helpers/faulty.js';
import { startCli, type CliProcess } from '../helpers/legate.js';
import { parseResponses } from '../helpers/raw-upstream.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const SEED = Number(process.env.LEGATE_FUZZ_SEED ?? 0x1e6a7e);
const DURATION_MS = Number(process.env.LEGATE_FUZZ_MS ?? 5_000);
const PARALLEL = 4;

/** mulberry32: small, fast, and the same sequence on every machine. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Gen {
  constructor(readonly random: () => number) {}
  int(max: number): number {
    return Math.floor(this.random() * max);
  }
  chance(p: number): boolean {
    return this.random() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  /** Bytes from the whole range, control characters, DEL and non-ASCII included. */
  bytes(max: number): string {
    let s = '';
    for (let n = this.int(max); n > 0; n--) s += String.fromCharCode(this.int(256));
    return s;
  }
  token(max: number): string {
    const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~";
    let s = '';
    for (let n = 1 + this.int(max); n > 0; n--) s += chars[this.int(chars.length)];
    return s;
  }
}

const CONTROL = [
  'x-legate-max-retries',
  'x-legate-retry-on',
  'x-legate-timeout-ms',
  'x-legate-per-try-timeout-ms',
  'x-legate-opt-out',
  'x-envoy-max-retries',
  'x-envoy-retry-on',
  'x-envoy-upstream-rq-timeout-ms',
  'x-envoy-upstream-rq-per-try-timeout-ms',
];
const HOSTILE_VALUES = ['-1', '0', '1', '99999999999999999999', '1e3', '0x1f', ' 7 ', 'NaN', '5xx', 'retry', 'log,retry', 'reset, 503', '', '\u00e9', '\u00ff\u00fe'];

/** One request, possibly broken on purpose. Latin-1 string: one char per byte on the wire. */
function requestBytes(g: Gen, upstreamPort: number): string {
  const eol = g.chance(0.9) ? '\r\n' : g.pick(['\n', '\r', '\r\r\n', '']);
  const method = g.pick(['GET', 'GET', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'CONNECT', g.token(8), g.bytes(6)]);
  const target = g.pick([
    '/api/x',
    '/api/x?q=1&r=%00',
    '/small',
    '/api/%2e%2e/x',
    '/api/../../etc/passwd',
    '//api//x',
    '*',
    'http://fuzz.internal/api',
    'http://evil.example/',
    `http://127.0.0.1:${upstreamPort}/api`,
    'http://user@fuzz.internal/',
    `/api/${g.bytes(20)}`,
    `/api/${'a'.repeat(g.int(5_000))}`,
    g.bytes(30),
  ]);
  const version = g.pick(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.10', 'http/1.1', g.bytes(8)]);
  const headers: string[] = [];
  if (g.chance(0.85)) headers.push(`Host: ${g.pick(['fuzz.internal', 'localhost:15001', 'evil.example', '127.0.0.1:1', '', g.bytes(10)])}`);
  const body = g.chance(0.4) ? g.bytes(300) : '';
  let framed = body;
  switch (g.int(7)) {
    case 0:
      headers.push(`Content-Length: ${body.length}`);
      break;
    case 1:
      headers.push(`Content-Length: ${g.pick([String(body.length + g.int(10) - 5), '-1', '1e2', `${body.length}, ${body.length}`, '99999999999999999999'])}`);
      break;
    case 2:
      headers.push('Transfer-Encoding: chunked');
      framed = `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`.replace('0\r\n\r\n', g.chance(0.8) ? '0\r\n\r\n' : g.bytes(6));
      if (body.length === 0) framed = '0\r\n\r\n';
      break;
    case 3:
      headers.push('Transfer-Encoding: chunked', `Content-Length: ${body.length}`);
      break;
    case 4:
      headers.push(`Transfer-Encoding: ${g.pick(['gzip', 'chunked, gzip', 'identity', 'xchunked', ' chunked', g.token(6)])}`);
      break;
    default:
      framed = '';
  }
  for (let n = g.int(6); n > 0; n--) {
    switch (g.int(5)) {
      case 0:
        headers.push(`${g.pick(CONTROL)}: ${g.chance(0.7) ? g.pick(HOSTILE_VALUES) : g.chance(0.5) ? Array(g.int(2_000)).fill('5xx').join(',') : g.bytes(30)}`);
        break;
      case 1:
        headers.push(`${g.token(20)}: ${g.bytes(40)}`);
        break;
      case 2:
        headers.push(`${g.bytes(10)}: ${g.token(10)}`);
        break;
      case 3:
        headers.push(g.pick(['Connection: close', 'Connection: keep-alive, x-a', 'Connection: upgrade', 'Upgrade: websocket', 'Expect: 100-continue', 'Host: second.example', `X-Request-Id: ${g.bytes(20)}`]));
        break;
      default:
        headers.push(`X-Pad: ${'p'.repeat(g.int(g.chance(0.1) ? 40_000 : 200))}`);
    }
  }
  if (g.chance(0.03)) for (let n = 0; n < 120; n++) headers.push(`x-h-${n}: 1`);
  let text = `${method} ${target} ${version}${eol}${headers.map((h) => h + eol).join('')}${eol}${framed}`;
  // Sometimes cut short, as a client that dies mid-request would.
  if (g.chance(0.1)) text = text.slice(0, g.int(text.length));
  return text;
}

interface Outcome {
  bytes: Buffer;
  closed: boolean;
}

/** Writes `text`, then reads until legate closes, or it has been quiet for 300 ms after answering, or 3 s pass. */
function exchange(port: number, text: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket: Socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let closed = false;
    let settled = false;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(hard);
      clearTimeout(quiet);
      socket.destroy();
      resolve({ bytes: Buffer.concat(chunks), closed });
    };
    const hard = setTimeout(finish, 3_000);
    let quiet: NodeJS.Timeout | undefined;
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      clearTimeout(quiet);
      quiet = setTimeout(finish, 300);
    });
    socket.on('end', () => {
      closed = true;
      finish();
    });
    socket.on('error', () => {
      closed = true;
      finish();
    });
    socket.write(Buffer.from(text, 'latin1'));
  });
}

let cli: CliProcess;
let up: Upstream;
const upstreamParseErrors: string[] = [];

beforeAll(async () => {
  up = await startUpstream();
  // Anything legate sends upstream must parse. A request legate cut on purpose (its app went away or sent a
  // broken body) ends in a reset or an early EOF on the upstream side: that is a cut, not a malformed request.
  up.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    const code = err.code ?? '';
    if (code.startsWith('HPE_') && code !== 'HPE_INVALID_EOF_STATE') upstreamParseErrors.push(code);
    socket.destroy();
  });
  cli = await startCli(
    routesYaml(
      [
        { name: 'api', match: { pathPrefix: '/api' }, upstream: up.url, optOut: ['retry', 'log'] },
        { name: 'small', match: { pathPrefix: '/small' }, upstream: up.url, limits: { maxRequestBody: 64 } },
        { name: 'host', match: { host: 'fuzz.internal' }, upstream: up.url, retry: { retries: 0 } },
      ],
      {
        // A request whose body never comes is cut by idleTimeout (408); every exchange ends well within 3 s.
        defaults: { timeout: '1500ms', idleTimeout: '500ms', circuitBreaker: { enabled: false } },
        limits: { headersTimeout: '1s' },
      },
    ),
  );
}, 30_000);

afterAll(async () => {
  await cli?.stop();
  await up?.close();
});

describe(`fuzz (seed ${SEED})`, () => {
  it(`for ${DURATION_MS / 1000} s: every answer is well-formed HTTP/1.1 or a clean close, and legate stays up`, { timeout: 60_000 }, async () => {
    const g = new Gen(prng(SEED));
    // The requests are drawn up front, in order, so the sequence does not depend on timing.
    const drawn: string[] = [];
    const draw = (): string => {
      const text = g.chance(0.1) ? requestBytes(g, up.port) + requestBytes(g, up.port) : requestBytes(g, up.port);
      drawn.push(text);
      return text;
    };
    const started = performance.now();
    const failures: string[] = [];
    let answered = 0;
    let closedOnly = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (performance.now() - started < DURATION_MS && failures.length === 0) {
          const index = drawn.length;
          const text = draw();
          const outcome = await exchange(cli.proxyPort, text);
          const where = `seed ${SEED}, request #${index}: ${JSON.stringify(text.slice(0, 300))}`;
          if (cli.child.exitCode !== null) {
            failures.push(`legate exited (${cli.child.exitCode}) after ${where}\n${cli.stderr()}`);
            return;
          }
          if (outcome.bytes.length === 0) {
            // A clean close without a byte is allowed (e.g. after a truncated request); silence is not.
            if (!outcome.closed) failures.push(`no answer and no close within 3 s: ${where}`);
            closedOnly++;
            continue;
          }
          try {
            const responses = parseResponses(outcome.bytes);
            for (const r of responses) {
              if (!r.complete || r.framing === 'close') throw new Error(`response ${r.status} is cut or not framed (${r.framing})`);
            }
            answered++;
          } catch (e) {
            failures.push(`${(e as Error).message}: ${where}\nanswer: ${JSON.stringify(outcome.bytes.toString('latin1').slice(0, 400))}`);
          }
        }
      }),
    );
    expect(failures, failures.join('\n\n')).toEqual([]);
    expect(answered, `seed ${SEED}: ${drawn.length} requests, ${closedOnly} closed without an answer`).toBeGreaterThan(50);

    // Still up and serving, with nothing on stderr (no crash trace, no warning from Node).
    expect(cli.child.exitCode).toBeNull();
    expect((await request({ port: cli.adminPort, path: '/healthz' })).status).toBe(200);
    expect((await request({ port: cli.proxyPort, path: '/api/after-fuzz' })).status).toBe(200);
    expect(cli.stderr(), `seed ${SEED}`).toBe('');

    // What reached the upstream parsed, and each request was one legate framed: its own Host and a request id.
    expect(upstreamParseErrors, `seed ${SEED}: malformed requests legate sent upstream`).toEqual([]);
    const foreign = up.seen.filter((s) => s.headers.host !== `127.0.0.1:${up.port}` || s.headers['x-request-id'] === undefined);
    expect(foreign.map((s) => `${s.method} ${s.url} host=${String(s.headers.host)}`), `seed ${SEED}: requests legate did not frame`).toEqual([]);
  });
});
