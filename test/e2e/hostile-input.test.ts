/**
 * A hostile or broken app against the real CLI, through raw sockets so that no
 * client library tidies the bytes first. Every case gets a clear status, never
 * reaches the upstream (its TCP accept count is read, not legate's word), and
 * after each barrage the process is alive and serving.
 *
 * Also the listener's own safety (SPEC §1, §2): loopback by default, a warning
 * when bound elsewhere, no way to the admin port through the proxy port, and
 * `limits.maxConnections` enforced — those in-process, where logs are read.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import { MAX_REQUEST_HEADERS } from '../../src/server/proxy-listener.js';
import { request } from '../helpers/client.js';
import { ok, routesYaml, startFaulty, type FaultyUpstream } from '../helpers/faulty.js';
import { startApp, startCli, waitFor, type CliProcess } from '../helpers/legate.js';
import { header, parseResponses, startRawUpstream, wire, type RawUpstream, type WireExchange, type WireResponse } from '../helpers/raw-upstream.js';
import { freePort } from '../helpers/upstream.js';

let cli: CliProcess;
let up: FaultyUpstream;
let early: RawUpstream;
let adminPort: number;

beforeAll(async () => {
  up = await startFaulty(() => ok);
  // Answers as soon as the head arrives, without reading the body (as an upstream refusing an upload does).
  early = await startRawUpstream((socket) => socket.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly'));
  // A fixed admin port, so that a route can name it (ports chosen by the OS are only known after start).
  adminPort = await freePort();
  const route = (name: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    name,
    match: { pathPrefix: `/${name}` },
    upstream: up.url,
    // Every case must be answered by legate, not by a breaker that opened during the barrage.
    circuitBreaker: { enabled: false },
    ...extra,
  });
  cli = await startCli(
    routesYaml(
      [
        route('api'),
        route('small', { limits: { maxRequestBody: '1KiB' } }),
        // Retries on: the body is buffered for replay before any try, so a stall is cut before any connection.
        route('slow-buffered', { idleTimeout: '400ms' }),
        // Retries off: the body streams to the upstream as it comes, and the stall is cut mid-request.
        route('slow-streamed', { idleTimeout: '400ms', retry: { retries: 0 } }),
        { name: 'admin-named', match: { host: `localhost:${adminPort}` }, upstream: up.url },
        { name: 'early', match: { pathPrefix: '/early' }, upstream: early.url, retry: { retries: 0 }, circuitBreaker: { enabled: false } },
      ],
      { admin: `127.0.0.1:${adminPort}`, limits: { headersTimeout: '1s', maxHeaderSize: '128KiB' } },
    ),
  );
}, 30_000);

afterAll(async () => {
  await cli?.stop();
  await up?.close();
  await early?.close();
});

/**
 * One raw exchange with the proxy port, and the single response it must carry.
 * With `untilClose` it waits for legate to close the connection (or 4 s);
 * otherwise it stops at the first complete response (keep-alive answers).
 */
async function exchange(bytes: string | Buffer, untilClose = false): Promise<{ x: WireExchange; r: WireResponse }> {
  const x = await wire(cli.proxyPort, bytes, untilClose ? { timeoutMs: 4_000 } : { responses: 1, timeoutMs: 4_000 });
  const responses = parseResponses(x.bytes);
  expect(responses, `one response to ${JSON.stringify(String(bytes).slice(0, 80))}`).toHaveLength(1);
  return { x, r: responses[0] as WireResponse };
}

/** The process is up, its admin answers, and a normal request still goes through. */
async function expectAlive(): Promise<void> {
  expect(cli.child.exitCode).toBeNull();
  expect((await request({ port: cli.adminPort, path: '/healthz' })).status).toBe(200);
  const normal = await request({ port: cli.proxyPort, path: '/api/still-serving' });
  expect(normal.status).toBe(200);
  expect(normal.headers['x-legate-route']).toBe('api');
}

/** Runs `cases` and asserts that none of them opened a connection to the upstream. */
async function withoutUpstream(cases: () => Promise<void>): Promise<void> {
  const before = up.connections.accepted;
  const seen = up.seen.length;
  await cases();
  // A connection made in error would land within a moment; give it one.
  await new Promise((r) => setTimeout(r, 50));
  expect(up.connections.accepted, 'connections the upstream accepted').toBe(before);
  expect(up.seen.length).toBe(seen);
}

const malformedCount = (): number => cli.lines.filter((l) => l.msg === 'malformed request from the app').length;

describe('malformed requests', () => {
  const cases: Record<string, string | Buffer> = {
    'no target or version': 'GET\r\n\r\n',
    'unknown HTTP version': 'GET /api HTTP/9.9\r\nHost: x\r\n\r\n',
    'NUL in the target': 'GET /api\x00 HTTP/1.1\r\nHost: x\r\n\r\n',
    'space in the target': 'GET /api/a b HTTP/1.1\r\nHost: x\r\n\r\n',
    'invalid method token': 'G@T /api HTTP/1.1\r\nHost: x\r\n\r\n',
    'bare LF line ends': 'GET /api HTTP/1.1\nHost: x\n\n',
    'obsolete line folding': 'GET /api HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n',
    'space in a header name': 'GET /api HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n',
    'control byte in a header value': 'GET /api HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n',
    'TLS ClientHello on the plain port': Buffer.from('160301020001000100fc0303', 'hex'),
    'HTTP/2 preface': 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
    'asterisk-form outside OPTIONS': 'GET * HTTP/1.1\r\nHost: x\r\n\r\n',
    'two Host headers': 'GET /api HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n',
    'userinfo in an absolute URL': 'GET http://user:pw@payments.internal/api HTTP/1.1\r\nHost: payments.internal\r\n\r\n',
  };

  it('each gets 400 bad-request (logged), the connection is closed, and nothing reaches the upstream', async () => {
    const logged = malformedCount();
    await withoutUpstream(async () => {
      for (const [what, bytes] of Object.entries(cases)) {
        const { x, r } = await exchange(bytes, true);
        expect(r.status, what).toBe(400);
        expect(header(r, 'x-legate-error'), what).toBe('bad-request');
        expect(JSON.parse(r.body.toString()) as unknown, what).toMatchObject({ error: 'bad-request' });
        expect(x.closedByPeer, `${what}: legate closes the connection`).toBe(true);
      }
    });
    // The parser's rejections are logged by the listener; those that reached routing have access lines.
    await waitFor(() => (malformedCount() - logged >= 10 ? true : undefined), 'a log line per parser-level rejection', 2_000);
    await expectAlive();
  });
});

describe('request smuggling', () => {
  const smuggled = 'GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
  const chunk = `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`;
  const ambiguous: Record<string, string> = {
    'Content-Length with Transfer-Encoding': `POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}`,
    'two differing Content-Lengths': `POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: ${smuggled.length + 4}\r\n\r\nbody${smuggled}`,
    'a Content-Length list': `POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 4, ${smuggled.length + 4}\r\n\r\nbody${smuggled}`,
    'a negative Content-Length': `POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n${smuggled}`,
    'Transfer-Encoding not ending in chunked': `POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n${smuggled}`,
    'Transfer-Encoding with a space before the colon': `POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n${chunk}`,
    'an unknown Transfer-Encoding': `POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n${chunk}`,
    'chunked twice': `POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n${chunk}`,
    // The head is valid, so the request is routed before the parser rejects its first chunk.
    'a chunk size that is not hex': `POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n${smuggled}\r\n0\r\n\r\n`,
  };

  it('ambiguous framing gets 400 and the upstream is not even connected to', async () => {
    await withoutUpstream(async () => {
      for (const [what, bytes] of Object.entries(ambiguous)) {
        const { x, r } = await exchange(bytes, true);
        expect(r.status, what).toBe(400);
        expect(header(r, 'x-legate-error'), what).toBe('bad-request');
        expect(x.closedByPeer, what).toBe(true);
      }
    });
    await expectAlive();
  });

  it.each(['GET', 'DELETE', 'OPTIONS', 'POST'])(
    'a chunked %s body reaches the upstream framed as a body, never as a second request',
    async (method) => {
      const before = up.seen.length;
      const { r } = await exchange(`${method} /api/framed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}`);
      expect(r.status).toBe(200);
      // Wait out a second request, should the upstream have parsed one from the body.
      await new Promise((res) => setTimeout(res, 100));
      const got = up.seen.slice(before);
      expect(got.map((s) => `${s.method} ${s.url}`)).toEqual([`${method} /api/framed`]);
      expect(got[0]?.body.toString('latin1')).toBe(smuggled);
    },
  );
});

describe('header size and count', () => {
  it('a header block over maxHeaderSize gets 431', async () => {
    await withoutUpstream(async () => {
      const { x, r } = await exchange(`GET /api HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(200 * 1024)}\r\n\r\n`, true);
      expect(r.status).toBe(431);
      expect(header(r, 'x-legate-error')).toBe('bad-request');
      expect(x.closedByPeer).toBe(true);
    });
    await expectAlive();
  });

  it(`more than ${MAX_REQUEST_HEADERS} header fields get 431; exactly ${MAX_REQUEST_HEADERS} pass`, async () => {
    const fields = (n: number): string => Array.from({ length: n - 1 }, (_, i) => `X-H-${i}: v\r\n`).join('');
    await withoutUpstream(async () => {
      const { r } = await exchange(`GET /api/many HTTP/1.1\r\nHost: x\r\n${fields(MAX_REQUEST_HEADERS + 1)}\r\n`);
      expect(r.status).toBe(431);
      expect(header(r, 'x-legate-error')).toBe('bad-request');
      expect(JSON.parse(r.body.toString())).toMatchObject({ message: `more than ${MAX_REQUEST_HEADERS} header fields` });
    });
    const { r } = await exchange(`GET /api/many HTTP/1.1\r\nHost: x\r\n${fields(MAX_REQUEST_HEADERS)}\r\n`);
    expect(r.status).toBe(200);
    await expectAlive();
  });
});

describe('bodies over the route limit', () => {
  it('a declared length, a chunked body and a length that never arrives all get 413 without contacting the upstream', async () => {
    const kib2 = 'x'.repeat(2048);
    await withoutUpstream(async () => {
      for (const bytes of [
        `POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n${kib2}`,
        `POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n${kib2}\r\n0\r\n\r\n`,
      ]) {
        const { r } = await exchange(bytes);
        expect(r.status).toBe(413);
        expect(header(r, 'x-legate-error')).toBe('request-too-large');
      }
      // Only the head of a 1 GB body: legate answers without waiting for it, and closes the connection, since
      // the unread rest would otherwise hold it (or be parsed as a next request).
      const { x, r } = await exchange(`POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n`, true);
      expect(r.status).toBe(413);
      expect(header(r, 'connection')).toBe('close');
      expect(x.closedByPeer).toBe(true);
    });
    await expectAlive();
  });
});

describe('slow-loris', () => {
  it('headers trickled past headersTimeout (1s) get 408 and a closed connection; so does a connection that sends nothing', async () => {
    await withoutUpstream(async () => {
      const [trickled, silent] = await Promise.all([
        wire(cli.proxyPort, 'GET /api HTTP/1.1\r\n', { trickle: Array.from({ length: 20 }, (_, i) => `X-Slow-${i}: 1\r\n`), everyMs: 200, timeoutMs: 4_000 }),
        wire(cli.proxyPort, '', { timeoutMs: 4_000 }),
      ]);
      for (const x of [trickled, silent]) {
        const [r] = parseResponses(x.bytes);
        expect(r?.status).toBe(408);
        expect(x.closedByPeer).toBe(true);
        // headersTimeout plus at most one check interval, far from Node's default 30 s check.
        expect(x.firstByteMs).toBeGreaterThanOrEqual(900);
        expect(x.firstByteMs).toBeLessThan(2_500);
      }
    });
    await expectAlive();
  });

  it.each(['slow-buffered', 'slow-streamed'])(
    'a body that goes silent for the route idleTimeout (400ms) gets 408 and a closed connection (%s)',
    async (route) => {
      const accepted = up.connections.accepted;
      const x = await wire(cli.proxyPort, `POST /${route} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab`, { timeoutMs: 4_000 });
      const [r] = parseResponses(x.bytes);
      expect(r?.status).toBe(408);
      expect(r === undefined ? undefined : header(r, 'x-legate-error')).toBe('bad-request');
      expect(r === undefined ? undefined : header(r, 'connection')).toBe('close');
      expect(x.closedByPeer).toBe(true);
      expect(x.firstByteMs).toBeGreaterThanOrEqual(350);
      expect(x.firstByteMs).toBeLessThan(1_500);
      // Buffered for replay: nothing was sent. Streamed: the partial request was cut, never completed.
      if (route === 'slow-buffered') expect(up.connections.accepted).toBe(accepted);
      const line = await cli.waitForLine((l) => l.msg === 'access' && l.route === route && l.status === 408, 'the access line of the cut request');
      expect(line.error).toBe('bad-request');
    },
  );

  it('an upstream that answers before the body ends: the answer is relayed, then the connection closes instead of waiting for the rest', async () => {
    // idleTimeout is the default 60 s here: only the early close ends this exchange quickly.
    const x = await wire(cli.proxyPort, `POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab`, { timeoutMs: 4_000 });
    const [r] = parseResponses(x.bytes);
    expect(r?.status).toBe(200);
    expect(r?.body.toString()).toBe('early');
    expect(r === undefined ? undefined : header(r, 'connection')).toBe('close');
    expect(x.closedByPeer).toBe(true);
    expect(x.ms).toBeLessThan(2_000);
  });

  it('a slow body that keeps making progress within idleTimeout is not cut', async () => {
    const x = await wire(cli.proxyPort, `POST /slow-buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n`, {
      // 8 bytes over ~1.2 s: three times the idle timeout in all, never 400 ms of silence.
      trickle: 'abcdefgh'.split(''),
      everyMs: 150,
      responses: 1,
      timeoutMs: 4_000,
    });
    expect(parseResponses(x.bytes)[0]?.status).toBe(200);
    await expectAlive();
  });
});

describe('targets and Host headers', () => {
  it('absolute-form URLs for hosts no route names get 404 no-route; nothing is sent anywhere', async () => {
    await withoutUpstream(async () => {
      for (const target of ['http://evil.example/', 'http://169.254.169.254/latest/meta-data', 'https://payments.internal/api', `http://127.0.0.1:${cli.proxyPort}/api`]) {
        const { r } = await exchange(`GET ${target} HTTP/1.1\r\nHost: evil.example\r\n\r\n`);
        expect(r.status, target).toBe(404);
        expect(header(r, 'x-legate-error'), target).toBe('no-route');
      }
    });
    await expectAlive();
  });

  it('a Host header naming another host reaches only the route upstream, with the upstream authority as Host', async () => {
    const before = up.seen.length;
    const { r } = await exchange('GET /api/where HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n');
    expect(r.status).toBe(200);
    expect(up.seen.slice(before).map((s) => s.headers.host)).toEqual([`127.0.0.1:${up.port}`]);
  });

  it('the admin port is not reachable through the proxy port by Host or absolute URL, unless a route names it', async () => {
    await withoutUpstream(async () => {
      for (const bytes of [
        `GET /api/x HTTP/1.1\r\nHost: 127.0.0.1:${adminPort}\r\n\r\n`,
        `GET /api/x HTTP/1.1\r\nHost: [::1]:${adminPort}\r\n\r\n`,
        `GET http://127.0.0.1:${adminPort}/config HTTP/1.1\r\nHost: 127.0.0.1:${adminPort}\r\n\r\n`,
        `GET http://[::1]:${adminPort}/metrics HTTP/1.1\r\nHost: x\r\n\r\n`,
      ]) {
        const { r } = await exchange(bytes);
        expect(r.status).toBe(404);
        expect(header(r, 'x-legate-error')).toBe('no-route');
        expect(r.body.toString()).not.toContain('legate_');
      }
    });
    // A route that names the authority takes it, to its own upstream: still never the admin listener.
    const { r } = await exchange(`GET /config HTTP/1.1\r\nHost: localhost:${adminPort}\r\n\r\n`);
    expect(r.status).toBe(200);
    expect(header(r, 'x-legate-route')).toBe('admin-named');
    expect(r.body.toString()).toMatch(/^status-\d+$/);
  });

  it('CONNECT gets 405 and the connection is closed', async () => {
    await withoutUpstream(async () => {
      const { x, r } = await exchange(`CONNECT 127.0.0.1:${adminPort} HTTP/1.1\r\nHost: 127.0.0.1:${adminPort}\r\n\r\n`, true);
      expect(r.status).toBe(405);
      expect(header(r, 'x-legate-error')).toBe('connect-unsupported');
      expect(x.closedByPeer).toBe(true);
    });
  });
});

describe('control headers with hostile values', () => {
  const numeric = ['x-legate-max-retries', 'x-legate-timeout-ms', 'x-legate-per-try-timeout-ms'];
  const envoyNumeric = ['x-envoy-max-retries', 'x-envoy-upstream-rq-timeout-ms', 'x-envoy-upstream-rq-per-try-timeout-ms'];
  const badNumbers = ['99999999999999999999999999', '-1', '1e9', '0x10', '1.5', '', 'NaN', 'Infinity', '5 5', '\u0663', '5\u00a0'];
  const lists = ['x-legate-retry-on', 'x-legate-opt-out'];

  /** Sends a header value as raw UTF-8 bytes: non-ASCII goes on the wire as it would from a careless app. */
  const send = (name: string, value: string) =>
    exchange(Buffer.from(`GET /api/ctl HTTP/1.1\r\nHost: x\r\n${name}: ${value}\r\n\r\n`, 'utf8'));

  it('huge, negative, non-numeric and non-ASCII numbers get 400 bad-control-header naming the header', async () => {
    await withoutUpstream(async () => {
      for (const name of numeric) {
        for (const value of badNumbers) {
          const { r } = await send(name, value);
          expect(r.status, `${name}: ${JSON.stringify(value)}`).toBe(400);
          expect(header(r, 'x-legate-error')).toBe('bad-control-header');
          expect((JSON.parse(r.body.toString()) as { message: string }).message).toContain(name);
        }
      }
    });
    await expectAlive();
  });

  it('the same values in the x-envoy-* headers are ignored, as Envoy ignores what it cannot parse: the request goes through on the route\'s policy', async () => {
    const values = [...badNumbers.map((v) => [envoyNumeric, v] as const), [['x-envoy-retry-on'], Array(10_000).fill('5xx').join(',')] as const];
    for (const [names, value] of values) {
      for (const name of names) {
        const before = up.seen.length;
        const { r } = await send(name, value);
        expect(r.status, `${name}: ${JSON.stringify(value.slice(0, 30))}`).toBe(200);
        expect(header(r, 'x-legate-attempts')).toBe('1');
        // Removed on the way like every control header, parsed or not.
        expect(up.seen.length).toBe(before + 1);
        expect(up.seen.at(-1)?.headers[name]).toBeUndefined();
      }
    }
    await expectAlive();
  });

  it('lists of 10,000 entries, unknown and non-ASCII entries, and one header repeated 90 times get 400', async () => {
    await withoutUpstream(async () => {
      for (const name of lists) {
        const entry = name === 'x-legate-opt-out' ? 'retry' : '5xx';
        const values = [Array(10_000).fill(entry).join(','), `${entry},r\u00e9try`, '\u2603'.repeat(500)];
        for (const value of values) {
          const { r } = await send(name, value);
          expect(r.status, `${name}: ${value.slice(0, 30)}`).toBe(400);
          expect(header(r, 'x-legate-error')).toBe('bad-control-header');
        }
      }
      const repeated = Array.from({ length: 90 }, () => 'x-legate-retry-on: 5xx\r\n').join('');
      const { r } = await exchange(`GET /api/ctl HTTP/1.1\r\nHost: x\r\n${repeated}\r\n`);
      expect(r.status).toBe(400);
      expect(header(r, 'x-legate-error')).toBe('bad-control-header');
    });
    await expectAlive();
  });
});

describe('listener safety (in-process)', () => {
  it('binds loopback unless told otherwise', () => {
    const loaded = loadConfigText('routes:\n  - name: r\n    upstream: http://127.0.0.1:9\n', 'routes.yaml');
    expect(loaded.ok && loaded.config.listen.host).toBe('127.0.0.1');
    expect(loaded.ok && loaded.config.admin.host).toBe('127.0.0.1');
  });

  it('logs a warning at start for a listener bound to every interface', async () => {
    const l = await startApp('listen: 0.0.0.0:0\nadmin: 127.0.0.1:0\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:9\n');
    try {
      const warning = l.logs.lines.find((x) => x.level === 40 && String(x.msg).includes('reachable from other hosts'));
      expect(warning).toMatchObject({ address: '0.0.0.0:0' });
      // The admin listener stayed on loopback and was not warned about.
      expect(l.logs.lines.filter((x) => x.level === 40 && String(x.msg).includes('reachable'))).toHaveLength(1);
    } finally {
      await l.stop();
    }
  });

  describe('limits.maxConnections', () => {
    const open = (port: number): Promise<net.Socket> =>
      new Promise((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => resolve(s));
        s.on('error', reject);
      });
    /** One keep-alive request on `s`; resolves with the status, or 0 when legate closed the socket instead. */
    const ask = (s: net.Socket): Promise<number> =>
      new Promise((resolve) => {
        let got = '';
        const done = (): void => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? 0));
        s.on('data', (d: Buffer) => {
          got += d.toString('latin1');
          if (got.includes('\r\n\r\n')) done();
        });
        s.on('close', done);
        s.on('error', () => undefined);
        s.write('GET /r HTTP/1.1\r\nHost: x\r\n\r\n');
      });

    it('connections beyond the limit are closed at accept, the others keep serving, and it is logged', async () => {
      const upstream = await startFaulty(() => ok);
      const l = await startApp(
        `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nlimits: { maxConnections: 3 }\nroutes:\n  - name: r\n    match: { pathPrefix: /r }\n    upstream: ${upstream.url}\n`,
      );
      const sockets: net.Socket[] = [];
      try {
        for (let i = 0; i < 3; i++) sockets.push(await open(l.proxyPort));
        expect(await Promise.all(sockets.map(ask))).toEqual([200, 200, 200]);
        const extra = [await open(l.proxyPort), await open(l.proxyPort)];
        sockets.push(...extra);
        // Closed before a byte was read: the request gets no answer at all.
        expect(await Promise.all(extra.map(ask))).toEqual([0, 0]);
        expect(await ask(sockets[0] as net.Socket)).toBe(200);
        const line = await waitFor(() => l.logs.lines.find((x) => x.level === 40 && x.maxConnections === 3), 'a warning about dropped connections', 2_000);
        expect(line.dropped).toBeGreaterThanOrEqual(1);
        // Room again once a connection closes.
        sockets[1]?.destroy();
        await new Promise((r) => setTimeout(r, 50));
        const again = await open(l.proxyPort);
        sockets.push(again);
        expect(await ask(again)).toBe(200);
      } finally {
        for (const s of sockets) s.destroy();
        await l.stop();
        await upstream.close();
      }
    });

    it('a reload applies limits to the listeners already open: maxConnections, maxHeaderSize, headersTimeout', async () => {
      const upstream = await startFaulty(() => ok);
      const yaml = (limits: string): string =>
        `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nlimits: ${limits}\nroutes:\n  - name: r\n    match: { pathPrefix: /r }\n    upstream: ${upstream.url}\n` +
        `  - name: side\n    listen: 127.0.0.1:0\n    upstream: ${upstream.url}\n`;
      const l = await startApp(yaml('{ maxConnections: 2, maxHeaderSize: 8KiB, headersTimeout: 30s }'));
      const side = Number(l.app.address('127.0.0.1:0')?.split(':').pop());
      // Under the upstream's own limit (Node's default, 16 KiB), over legate's first one.
      const bigHeaders = `GET /r HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(12 * 1024)}\r\n\r\n`;
      const statusOf = async (port: number, bytes: string): Promise<number | undefined> =>
        parseResponses((await wire(port, bytes, { responses: 1, timeoutMs: 4_000 })).bytes)[0]?.status;
      const sockets: net.Socket[] = [];
      try {
        expect(await statusOf(l.proxyPort, bigHeaders)).toBe(431);
        expect(await statusOf(side, bigHeaders)).toBe(431);
        for (let i = 0; i < 2; i++) sockets.push(await open(l.proxyPort));
        expect(await Promise.all(sockets.map(ask))).toEqual([200, 200]);
        const third = await open(l.proxyPort);
        sockets.push(third);
        expect(await ask(third)).toBe(0);
        // Opened before the reload and silent: under 30 s nothing happens to it; under 1 s it gets its 408.
        const silentBefore = wire(l.proxyPort, '', { timeoutMs: 6_000 });

        expect((await l.app.reloadText(yaml('{ maxConnections: 4, maxHeaderSize: 16KiB, headersTimeout: 1s }'))).ok).toBe(true);
        expect(l.logs.lines.find((x) => x.msg === 'server limits applied')).toBeDefined();
        expect(await statusOf(l.proxyPort, bigHeaders)).toBe(200);
        expect(await statusOf(side, bigHeaders)).toBe(200);
        const before = await silentBefore;
        expect(parseResponses(before.bytes)[0]?.status).toBe(408);
        expect(before.closedByPeer).toBe(true);
        // The two kept-alive connections and two more fit under 4; a fifth does not.
        const more = [await open(l.proxyPort), await open(l.proxyPort)];
        sockets.push(...more);
        expect(await Promise.all(more.map(ask))).toEqual([200, 200]);
        const fifth = await open(l.proxyPort);
        sockets.push(fifth);
        expect(await ask(fifth)).toBe(0);
      } finally {
        for (const s of sockets) s.destroy();
        await l.stop();
        await upstream.close();
      }
    });
  });
});
