/**
 * The core contract (SPEC §2, §5) through real sockets: a real upstream on
 * 127.0.0.1, legate in-process, requests from a plain HTTP client or a raw socket.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { describe, expect, it } from 'vitest';
import { rawExchange, request } from '../helpers/client.js';
import { waitFor, type InProcess } from '../helpers/legate.js';
import { testScope } from '../helpers/scope.js';
import { deadPort, echo } from '../helpers/upstream.js';

const scope = testScope();
const upstream = scope.upstream;
const legate = (yaml: string): Promise<InProcess> => scope.app(`listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n${yaml}`);

interface Echo {
  method: string;
  url: string;
  headers: Record<string, string>;
  bodyBytes: number;
  port: number;
}

describe('routing and forwarding', () => {
  it('strips the prefix, joins the upstream base path and keeps path and query byte for byte', async () => {
    const up = await upstream();
    const l = await legate(`routes:
  - name: payments
    match: { pathPrefix: /payments }
    stripPrefix: true
    upstream: ${up.url}/api/v2
`);
    for (const [sent, forwarded] of [
      ["/payments/charge//x'y?a=//b&c=%20&d", "/api/v2/charge//x'y?a=//b&c=%20&d"],
      ['/payments', '/api/v2'],
      ['/payments?x=1', '/api/v2?x=1'],
      ['/payments/a/./b', '/api/v2/a/b'],
    ] as const) {
      const r = await request({ port: l.proxyPort, path: sent });
      expect(r.status).toBe(200);
      expect(r.json<Echo>().url).toBe(forwarded);
    }
  });

  it('sends the upstream authority as Host unless preserveHost, and drops hop-by-hop and control headers', async () => {
    const up = await upstream();
    const l = await legate(`routes:
  - name: plain
    match: { pathPrefix: /plain }
    upstream: ${up.url}
  - name: keep
    match: { pathPrefix: /keep }
    preserveHost: true
    upstream: ${up.url}
`);
    const headers = {
      host: 'app.local:15001',
      connection: 'keep-alive, x-hop',
      'x-hop': 'secret',
      'keep-alive': 'timeout=5',
      'proxy-authorization': 'Basic eA==',
      'x-legate-max-retries': '1',
      'x-legate-anything': 'x',
      'x-envoy-max-retries': '1',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      tracestate: 'congo=t61rcWkgMzE',
      'x-app': 'kept',
    };
    const plain = (await request({ port: l.proxyPort, path: '/plain', headers })).json<Echo>().headers;
    expect(plain.host).toBe(`127.0.0.1:${up.port}`);
    for (const dropped of ['x-hop', 'keep-alive', 'proxy-authorization', 'x-legate-max-retries', 'x-legate-anything', 'x-envoy-max-retries']) {
      expect(plain[dropped], dropped).toBeUndefined();
    }
    expect(plain.traceparent).toBe(headers.traceparent);
    expect(plain.tracestate).toBe(headers.tracestate);
    expect(plain['x-app']).toBe('kept');
    const kept = (await request({ port: l.proxyPort, path: '/keep', headers })).json<Echo>().headers;
    expect(kept.host).toBe('app.local:15001');
  });

  it('keeps the app’s x-request-id, or makes one, sends it upstream and returns it with the legate headers', async () => {
    const up = await upstream();
    const l = await legate(`routes:\n  - name: r\n    upstream: ${up.url}\n`);
    const kept = await request({ port: l.proxyPort, path: '/', headers: { 'x-request-id': 'abc-123' } });
    expect(kept.headers['x-request-id']).toBe('abc-123');
    expect(kept.json<Echo>().headers['x-request-id']).toBe('abc-123');
    expect(kept.headers['x-legate-route']).toBe('r');
    expect(kept.headers['x-legate-attempts']).toBe('1');
    expect(Number(kept.headers['x-legate-upstream-time-ms'])).toBeGreaterThanOrEqual(0);
    const made = await request({ port: l.proxyPort, path: '/' });
    expect(made.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(made.json<Echo>().headers['x-request-id']).toBe(made.headers['x-request-id']);
  });

  it('takes absolute-form (HTTP_PROXY) requests by URL host, and answers 404 no-route for any other host without sending anything', async () => {
    const up = await upstream();
    const l = await legate(`routes:
  - name: payments
    match: { host: payments.internal }
    upstream: ${up.url}
  - name: catch-all
    match: { pathPrefix: / }
    upstream: ${up.url}
`);
    const ok = await request({ port: l.proxyPort, path: 'http://payments.internal/charge?x=1' });
    expect(ok.status).toBe(200);
    expect(ok.headers['x-legate-route']).toBe('payments');
    expect(ok.json<Echo>().url).toBe('/charge?x=1');
    const before = up.seen.length;
    const denied = await request({ port: l.proxyPort, path: 'http://169.254.169.254/latest/meta-data' });
    expect(denied.status).toBe(404);
    expect(denied.headers['x-legate-error']).toBe('no-route');
    expect(denied.json()).toMatchObject({ error: 'no-route', route: null, attempts: 0, requestId: denied.headers['x-request-id'] });
    expect(up.seen.length).toBe(before);
  });

  it('answers CONNECT with 405 connect-unsupported and a hint to call http://', async () => {
    const l = await legate(`routes:\n  - name: r\n    upstream: http://127.0.0.1:9\n`);
    const raw = await rawExchange(l.proxyPort, 'CONNECT payments.internal:443 HTTP/1.1\r\nHost: payments.internal:443\r\n\r\n');
    expect(raw).toMatch(/^HTTP\/1\.1 405 /);
    expect(raw).toMatch(/x-legate-error: connect-unsupported/i);
    expect(raw).toMatch(/http:\/\//);
  });

  it('refuses a path that climbs out of its prefix with 400, sent raw so no client normalises it first', async () => {
    const up = await upstream();
    const l = await legate(`routes:
  - name: api
    match: { pathPrefix: /api }
    upstream: ${up.url}
  - name: admin
    match: { pathPrefix: /admin }
    upstream: ${up.url}
`);
    for (const path of ['/api/../admin', '/api/%2e%2e/admin', '/..']) {
      const raw = await rawExchange(l.proxyPort, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect(raw, path).toMatch(/^HTTP\/1\.1 400 /);
      expect(raw).toMatch(/x-legate-error: bad-request/i);
    }
    expect(up.seen.length).toBe(0);
  });

  it('spreads requests over a weighted list by weight', async () => {
    const a = await upstream();
    const b = await upstream();
    const l = await legate(`routes:
  - name: w
    upstream: [{ url: "${a.url}", weight: 3 }, { url: "${b.url}", weight: 1 }]
`);
    for (let i = 0; i < 40; i++) expect((await request({ port: l.proxyPort, path: '/' })).status).toBe(200);
    expect(a.seen.length).toBe(30);
    expect(b.seen.length).toBe(10);
  });

  it('gives a route with its own listener that whole port', async () => {
    const up = await upstream();
    const l = await legate(`routes:
  - name: main
    match: { pathPrefix: /main }
    upstream: ${up.url}
  - name: own
    listen: 127.0.0.1:0
    upstream: ${up.url}/own
`);
    const port = Number(l.app.address('127.0.0.1:0')?.split(':').pop());
    const r = await request({ port, path: '/anything?x' });
    expect(r.headers['x-legate-route']).toBe('own');
    expect(r.json<Echo>().url).toBe('/own/anything?x');
    expect((await request({ port: l.proxyPort, path: '/anything' })).status).toBe(404);
  });

  it('maps a refused connection to 502 upstream-connect-failure with the JSON error body', async () => {
    const port = await deadPort();
    const l = await legate(`routes:
  - name: dead
    upstream: http://127.0.0.1:${port}
    retry: { retries: 0 }
`);
    const r = await request({ port: l.proxyPort, path: '/x' });
    expect(r.status).toBe(502);
    expect(r.headers['x-legate-error']).toBe('upstream-connect-failure');
    expect(r.json()).toMatchObject({ error: 'upstream-connect-failure', route: 'dead', attempts: 1, requestId: r.headers['x-request-id'] });
    expect(String(r.json().message)).toContain(`127.0.0.1:${port}`);
  });

  it('passes an upstream 5xx through as the upstream sent it, with the legate headers', async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(500, { 'content-type': 'text/plain', 'x-upstream': 'yes' });
      res.end('upstream broke');
    });
    const l = await legate(`routes:\n  - name: r\n    upstream: ${up.url}\n    retry: { retries: 0 }\n`);
    const r = await request({ port: l.proxyPort, path: '/' });
    expect(r.status).toBe(500);
    expect(r.body).toBe('upstream broke');
    expect(r.headers['x-upstream']).toBe('yes');
    expect(r.headers['x-legate-error']).toBeUndefined();
    expect(r.headers['x-legate-route']).toBe('r');
  });

  it('answers Expect: 100-continue itself and forwards the body without the Expect header', async () => {
    const up = await upstream();
    const l = await legate(`routes:\n  - name: r\n    upstream: ${up.url}\n`);
    const body = await new Promise<Echo>((resolve, reject) => {
      const req = http.request({ port: l.proxyPort, method: 'POST', path: '/', headers: { expect: '100-continue', 'content-length': '5' } });
      req.on('continue', () => req.end('hello'));
      req.on('response', (res) => {
        let s = '';
        res.on('data', (c: Buffer) => (s += c.toString()));
        res.on('end', () => resolve(JSON.parse(s) as Echo));
      });
      req.on('error', reject);
    });
    expect(body.bodyBytes).toBe(5);
    expect(body.headers.expect).toBeUndefined();
  });
});

describe('request body limit', () => {
  it('answers 413 request-too-large for a declared length over the limit without contacting the upstream', async () => {
    const up = await upstream();
    const l = await legate(`routes:\n  - name: r\n    upstream: ${up.url}\n    limits: { maxRequestBody: 1KiB }\n`);
    const ok = await request({ port: l.proxyPort, method: 'POST', path: '/', body: Buffer.alloc(1024) });
    expect(ok.json<Echo>().bodyBytes).toBe(1024);
    const big = await request({ port: l.proxyPort, method: 'POST', path: '/', body: Buffer.alloc(1025) });
    expect(big.status).toBe(413);
    expect(big.headers['x-legate-error']).toBe('request-too-large');
    expect(up.seen.length).toBe(1);
  });

  it('cuts a chunked body when it passes the limit, retried or streamed', async () => {
    const up = await upstream(echo);
    for (const retries of [0, 2]) {
      const l = await legate(`routes:\n  - name: r\n    upstream: ${up.url}\n    limits: { maxRequestBody: 100KiB }\n    retry: { retries: ${retries} }\n`);
      const send = (size: number) =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const req = http.request({ port: l.proxyPort, method: 'PUT', path: '/', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
            let b = '';
            res.on('data', (c: Buffer) => (b += c.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
          });
          req.on('error', reject);
          for (let sent = 0; sent < size; sent += 10 * 1024) req.write(Buffer.alloc(10 * 1024));
          req.end();
        });
      const small = await send(50 * 1024);
      expect(small.status, `retries ${retries}`).toBe(200);
      expect((JSON.parse(small.body) as Echo).bodyBytes).toBe(50 * 1024);
      const big = await send(300 * 1024);
      expect(big.status, `retries ${retries}`).toBe(413);
      expect(big.body).toContain('request-too-large');
    }
  });
});

describe('streaming', () => {
  const SIZE = 100 * 1024 * 1024;
  const CHUNK = Buffer.alloc(64 * 1024, 7);
  /**
   * What legate may hold between a sender and a receiver that stopped reading:
   * socket buffers and stream high-water marks, a few MiB. Store-and-forward
   * would let the sender push all 100 MiB.
   */
  const BOUND = 24 * 1024 * 1024;

  /**
   * Writes CHUNKs to `out` until it stays blocked (no 'drain' within `quietMs`
   * after write() said to wait): the point where every buffer in between is
   * full. Resolves with the bytes written by then.
   */
  async function writeUntilBlocked(out: NodeJS.WritableStream, quietMs = 400): Promise<number> {
    let written = 0;
    for (;;) {
      while (out.write(CHUNK)) written += CHUNK.length;
      written += CHUNK.length;
      if (written >= SIZE) return written;
      const drained = await Promise.race([
        new Promise<boolean>((r) => out.once('drain', () => r(true))),
        new Promise<boolean>((r) => setTimeout(() => r(false), quietMs)),
      ]);
      if (!drained) return written;
    }
  }

  async function finish(out: NodeJS.WritableStream, written: number): Promise<void> {
    for (let n = written; n < SIZE; n += CHUNK.length) {
      if (!out.write(CHUNK)) await new Promise((r) => out.once('drain', r));
    }
    out.end();
  }

  it('streams a 100 MiB upload: with the upstream not reading, the app is held back after a few MiB', async () => {
    let resume: (() => void) | undefined;
    const up = await upstream(
      (req, res) => {
        req.pause();
        resume = () => {
          let n = 0;
          const hash = createHash('sha256');
          req.on('data', (c: Buffer) => {
            n += c.length;
            hash.update(c);
          });
          req.on('end', () => res.end(JSON.stringify({ n, sha: hash.digest('hex') })));
          req.resume();
        };
      },
      { stream: true },
    );
    const l = await legate(`routes:\n  - name: big\n    upstream: ${up.url}\n    retry: { retries: 0 }\n`);
    const reply = new Promise<{ n: number; sha: string }>((resolve, reject) => {
      const req = http.request({ port: l.proxyPort, method: 'POST', path: '/up', headers: { 'content-length': String(SIZE) } }, (res) => {
        let s = '';
        res.on('data', (c: Buffer) => (s += c.toString()));
        res.on('end', () => resolve(JSON.parse(s) as { n: number; sha: string }));
      });
      req.on('error', reject);
      void (async () => {
        const written = await writeUntilBlocked(req);
        expect(written).toBeLessThan(BOUND);
        expect(resume).toBeDefined();
        resume?.();
        await finish(req, written);
      })().catch(reject);
    });
    const expected = createHash('sha256');
    for (let n = 0; n < SIZE; n += CHUNK.length) expected.update(CHUNK);
    expect(await reply).toEqual({ n: SIZE, sha: expected.digest('hex') });
  }, 60_000);

  it('streams a 100 MiB download: with the app not reading, the upstream is held back after a few MiB', async () => {
    let blockedAt: number | undefined;
    const up = await upstream(
      (_req, res) => {
        res.writeHead(200, { 'content-length': String(SIZE) });
        void (async () => {
          const written = await writeUntilBlocked(res);
          blockedAt = written;
          await finish(res, written);
        })();
      },
      { stream: true },
    );
    const l = await legate(`routes:\n  - name: big\n    upstream: ${up.url}\n    retry: { retries: 0 }\n`);
    const received = await new Promise<number>((resolve, reject) => {
      http.get({ port: l.proxyPort, path: '/down' }, (res) => {
        res.pause();
        let n = 0;
        void waitFor(() => blockedAt, 'the upstream to be held back').then(() => {
          res.on('data', (c: Buffer) => (n += c.length));
          res.on('end', () => resolve(n));
          res.resume();
        }, reject);
        res.on('error', reject);
      });
    });
    expect(blockedAt).toBeLessThan(BOUND);
    expect(received).toBe(SIZE);
  }, 60_000);

  // The upstream writes the next piece only once the app has the previous one, so a proxy that held
  // chunks back (until the end, or until more arrived) would never finish. With a Content-Length the
  // forward layer corks the app's response while more is due (one write for pieces that came together),
  // and must still let go of what it has when the turn of the event loop ends.
  it.each([
    ['a stream of unknown length (server-sent events)', false],
    ['a body of known length', true],
  ])('passes %s on as it comes: the app has each piece before the upstream sends the next', async (_framing, known) => {
    const pieces = [1, 2, 3, 4, 5].map((i) => `data: ${i}\n\n`);
    const received: string[] = [];
    const up = await upstream(
      (_req, res) => {
        const head: Record<string, string | number> = { 'content-type': 'text/event-stream' };
        if (known) head['content-length'] = Buffer.byteLength(pieces.join(''));
        res.writeHead(200, head);
        void (async () => {
          for (const piece of pieces) {
            res.write(piece);
            await waitFor(() => (received.join('').includes(piece) ? true : undefined), `the app to get ${JSON.stringify(piece)}`);
          }
          res.end();
        })();
      },
      { stream: true },
    );
    const l = await legate(`routes:\n  - name: events\n    upstream: ${up.url}\n    retry: { retries: 0 }\n`);
    await new Promise<void>((resolve, reject) => {
      http.get({ port: l.proxyPort, path: '/events' }, (res) => {
        res.setEncoding('utf8');
        res.on('data', (c: string) => received.push(c));
        res.on('end', resolve);
        res.on('error', reject);
      });
    });
    expect(received.join('')).toBe(pieces.join(''));
  }, 30_000);
});

describe('admin', () => {
  it('serves /healthz, /readyz and /config without header values', async () => {
    const up = await upstream(echo);
    const l = await legate(`routes:
  - name: r
    upstream: ${up.url}
    headers:
      request:
        set: { authorization: "Bearer s3cr3t-value" }
`);
    expect((await request({ port: l.adminPort, path: '/healthz' })).status).toBe(200);
    expect((await request({ port: l.adminPort, path: '/readyz' })).status).toBe(200);
    const config = await request({ port: l.adminPort, path: '/config' });
    expect(config.status).toBe(200);
    expect(config.body).not.toContain('s3cr3t-value');
    expect(config.json<{ routes: Array<{ name: string }> }>().routes[0]?.name).toBe('r');
  });
});
