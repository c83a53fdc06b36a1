/**
 * mTLS towards upstreams (SPEC §8), through real sockets: legate in front of
 * a Node https server that requires a client certificate, with certificates
 * generated for this run.
 */
import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request, type Reply } from '../helpers/client.js';
import { createTestPki, installPair, type Issued, type RotationMode, type TestPki } from '../helpers/certs.js';
import { CLI, startApp, startCli, tempDir, waitFor, type CliProcess, type InProcess } from '../helpers/legate.js';
import { startTlsUpstream, type TlsUpstream, type TlsUpstreamOptions } from '../helpers/tls-upstream.js';

let pki: TestPki;
const cleanup: Array<() => unknown> = [];

beforeAll(() => {
  pki = createTestPki();
});
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function upstreamWith(opts: Partial<TlsUpstreamOptions> = {}): Promise<TlsUpstream> {
  const up = await startTlsUpstream({ server: pki.server, clientCa: pki.ca.certPem, ...opts });
  cleanup.push(() => up.close());
  return up;
}

interface RouteSpec {
  readonly name?: string;
  readonly prefix?: string;
  readonly upstream: string;
  readonly tls: Record<string, string | undefined>;
}

function tlsYaml(tls: Record<string, string | undefined>, indent: string): string {
  return Object.entries(tls)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${indent}${k}: ${String(v)}`)
    .join('\n');
}

function yamlFor(routes: readonly RouteSpec[]): string {
  const lines = ['listen: 127.0.0.1:0', 'admin: 127.0.0.1:0', 'routes:'];
  for (const [i, r] of routes.entries()) {
    lines.push(`  - name: ${r.name ?? `r${i}`}`);
    if (r.prefix !== undefined) lines.push(`    match: { pathPrefix: ${r.prefix} }`);
    lines.push(`    upstream: ${r.upstream}`, '    tls:', tlsYaml(r.tls, '      '));
  }
  return `${lines.join('\n')}\n`;
}

async function legate(routes: readonly RouteSpec[]): Promise<InProcess> {
  const app = await startApp(yamlFor(routes));
  cleanup.push(() => app.stop());
  return app;
}

const clientA = (i: Issued = pki.clientA) => ({ cert: i.cert, key: i.key });

async function get(app: { proxyPort: number }, path = '/x'): Promise<Reply> {
  return request({ port: app.proxyPort, path });
}

function cnOf(reply: Reply): string {
  return reply.json<{ cn: string }>().cn;
}

function expectTlsFailure(reply: Reply, message: RegExp): void {
  expect(reply.status).toBe(502);
  expect(reply.headers['x-legate-error']).toBe('upstream-tls-failure');
  const body = reply.json<{ error: string; message: string }>();
  expect(body.error).toBe('upstream-tls-failure');
  expect(body.message).toMatch(message);
}

describe.each(['TLSv1.3', 'TLSv1.2'] as const)('client certificate over %s', (maxVersion) => {
  it('is presented and accepted: 200, and the upstream sees its subject', async () => {
    const up = await upstreamWith({ maxVersion });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, ...clientA() } }]);
    const reply = await get(app);
    expect(reply.status).toBe(200);
    expect(cnOf(reply)).toBe('client-a');
    expect(up.connections).toEqual(['client-a']);
  });

  it('missing → 502 upstream-tls-failure saying the server wants one (not upstream-reset)', async () => {
    const up = await upstreamWith({ maxVersion });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert } }]);
    // Several tries: the TLS 1.3 refusal races between an alert and a plain reset.
    for (let i = 0; i < 5; i++) {
      expectTlsFailure(await get(app), /client certificate refused: .*(none was presented|none is configured|no client certificate is configured)/);
    }
    expect(up.requests).toEqual([]);
  });

  it('missing, with a server that closes without an alert → still upstream-tls-failure, not upstream-reset', async () => {
    const up = await upstreamWith({ maxVersion, refuse: 'drop' });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert } }]);
    for (let i = 0; i < 5; i++) {
      expectTlsFailure(await get(app), /client certificate refused: the server asked for a client certificate and closed the connection .*no client certificate is configured/);
    }
    expect(up.requests).toEqual([]);
  });

  it('signed by a CA the server does not trust → 502 upstream-tls-failure naming the certificate presented', async () => {
    const up = await upstreamWith({ maxVersion });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, ...clientA(pki.clientOtherCa) } }]);
    for (let i = 0; i < 5; i++) {
      expectTlsFailure(await get(app), /client certificate refused: .*presented CN=client-other-ca/);
    }
    expect(up.requests).toEqual([]);
  });
});

describe('verifying the server', () => {
  it('unknown CA: a server certificate from another CA → 502 naming issuer and the trusted CA file', async () => {
    const up = await upstreamWith({ server: pki.serverOtherCa });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, ...clientA() } }]);
    expectTlsFailure(await get(app), new RegExp(`unknown CA: .*issued by CN=Unrelated Test CA; trusted: ${pki.ca.cert}`));
  });

  it('without ca the system store is used, which does not know the test CA', async () => {
    const up = await upstreamWith();
    const app = await legate([{ upstream: up.url, tls: clientA() }]);
    expectTlsFailure(await get(app), /unknown CA: .*trusted: the system CA store/);
  });

  it('hostname mismatch: serverName not in the SANs → 502 naming the expected name and the SANs', async () => {
    const up = await upstreamWith();
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, serverName: 'wrong.example', ...clientA() } }]);
    expectTlsFailure(await get(app), /hostname mismatch: the server certificate is not valid for wrong\.example \(it names DNS:localhost, IP Address:127\.0\.0\.1\)/);
  });

  it('hostname mismatch: a certificate for another name → 502', async () => {
    const up = await upstreamWith({ server: pki.serverWrongName });
    const app = await legate([{ upstream: `https://localhost:${up.port}`, tls: { ca: pki.ca.cert, ...clientA() } }]);
    expectTlsFailure(await get(app), /hostname mismatch: .*not valid for localhost \(it names DNS:other\.example\)/);
  });

  it('serverName is what is checked: the URL says 127.0.0.1, the certificate says localhost', async () => {
    const up = await upstreamWith({ server: pki.serverWrongName });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, serverName: 'other.example', ...clientA() } }]);
    const reply = await get(app);
    expect(reply.status).toBe(200);
    expect(cnOf(reply)).toBe('client-a');
  });

  it('expired server certificate → 502 saying expired', async () => {
    const up = await upstreamWith({ server: pki.serverExpired });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, ...clientA() } }]);
    expectTlsFailure(await get(app), /expired: the server certificate has expired \(CN=localhost, notAfter /);
  });

  it('server certificate not yet valid → 502 saying not yet valid', async () => {
    const up = await upstreamWith({ server: pki.serverNotYetValid });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, ...clientA() } }]);
    expectTlsFailure(await get(app), /not yet valid: .*notBefore /);
  });

  it('minVersion TLSv1.3 against a TLS 1.2 server → 502 naming the version floor', async () => {
    const up = await upstreamWith({ maxVersion: 'TLSv1.2' });
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, minVersion: 'TLSv1.3', ...clientA() } }]);
    expectTlsFailure(await get(app), /no TLS version in common with the server \(minVersion TLSv1\.3\)/);
  });
});

describe('TLS identities', () => {
  it('two routes with different client certificates never share a connection', async () => {
    const up = await upstreamWith();
    const app = await legate([
      { name: 'as-a', prefix: '/a', upstream: up.url, tls: { ca: pki.ca.cert, ...clientA() } },
      { name: 'as-b', prefix: '/b', upstream: up.url, tls: { ca: pki.ca.cert, ...clientA(pki.clientB) } },
    ]);
    for (let round = 0; round < 10; round++) {
      // Concurrent and interleaved, so a shared pool would hand one route's socket to the other.
      const replies = await Promise.all([get(app, '/a'), get(app, '/b'), get(app, '/a'), get(app, '/b')]);
      expect(replies.map((r) => [r.status, cnOf(r)])).toEqual([
        [200, 'client-a'],
        [200, 'client-b'],
        [200, 'client-a'],
        [200, 'client-b'],
      ]);
    }
    expect(new Set(up.connections)).toEqual(new Set(['client-a', 'client-b']));
    // Pooled per identity: 40 requests over a handful of keep-alive connections.
    expect(up.connections.length).toBeLessThanOrEqual(8);
  });

  it('an endpoint’s own tls overrides the route’s', async () => {
    const up = await upstreamWith();
    const yaml = [
      'listen: 127.0.0.1:0',
      'admin: 127.0.0.1:0',
      'routes:',
      '  - name: r',
      '    tls:',
      tlsYaml({ ca: pki.ca.cert, ...clientA() }, '      '),
      '    upstream:',
      `      - url: ${up.url}`,
      '        tls:',
      tlsYaml(clientA(pki.clientB), '          '),
      '',
    ].join('\n');
    const app = await startApp(yaml);
    cleanup.push(() => app.stop());
    expect(cnOf(await get(app))).toBe('client-b');
  });

  it('/config shows the tls paths and never key material', async () => {
    const up = await upstreamWith();
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, ...clientA() } }]);
    expect((await get(app)).status).toBe(200);
    const view = await request({ port: app.adminPort, path: '/config' });
    expect(view.status).toBe(200);
    expect(view.body).toContain(JSON.stringify(pki.clientA.key));
    expect(view.body).not.toContain('PRIVATE KEY');
    expect(view.body).not.toContain(keyBody(pki.clientA));
  });
});

function keyBody(issued: Issued): string {
  return issued.keyPem.split('\n').filter((l) => l !== '' && !l.startsWith('-----')).join('').slice(0, 40);
}

interface Outcome {
  status: number;
  attempts: string | undefined;
  cn: string | undefined;
}

/** Clients that keep calling until stopped, each recording every reply in order. */
function keepCalling(app: { proxyPort: number }, clients: number) {
  let running = true;
  const outcomes: Outcome[][] = Array.from({ length: clients }, () => []);
  const loops = outcomes.map(async (mine) => {
    while (running) {
      try {
        const r = await get(app);
        mine.push({ status: r.status, attempts: r.headers['x-legate-attempts'] as string | undefined, cn: r.status === 200 ? cnOf(r) : r.body });
      } catch (e) {
        mine.push({ status: 0, attempts: undefined, cn: String(e) });
      }
    }
  });
  return {
    outcomes,
    all: () => outcomes.flat(),
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

describe('rotation without restart, while a client keeps calling', () => {
  it.each<RotationMode>(['rename', 'in-place', 'kubernetes'])('%s: no failed request, the upstream sees the new identity', async (mode) => {
    const up = await upstreamWith();
    const pair = installPair(tempDir(), pki.clientA, mode);
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, cert: pair.cert, key: pair.key } }]);
    const traffic = keepCalling(app, 2);
    cleanup.push(() => traffic.stop());
    await waitFor(() => (traffic.all().length >= 20 ? true : undefined), 'traffic before the rotation');
    pair.rotate(pki.clientB);
    await waitFor(
      () => (traffic.outcomes.every((o) => o.some((x) => x.cn === 'client-b')) ? true : undefined),
      'every client to see the new identity',
      10_000,
    );
    await traffic.stop();

    const all = traffic.all();
    expect(all.filter((o) => o.status !== 200 || o.attempts !== '1')).toEqual([]);
    expect(all.some((o) => o.cn === 'client-a')).toBe(true);
    for (const mine of traffic.outcomes) {
      // Once a client got the new identity it never goes back: retired connections are not reused.
      const first = mine.findIndex((o) => o.cn === 'client-b');
      expect(mine.slice(first).filter((o) => o.cn !== 'client-b')).toEqual([]);
    }
    expect(up.requests.at(-1)).toBe('client-b');
    const reloaded = app.logs.lines.find((l) => l.msg === 'certificate reloaded' && l.subject === 'CN=client-b');
    expect(reloaded).toMatchObject({ level: 30, file: pair.cert });
    const logs = JSON.stringify(app.logs.lines);
    expect(logs).not.toContain('PRIVATE KEY');
    expect(logs).not.toContain(keyBody(pki.clientA));
    expect(logs).not.toContain(keyBody(pki.clientB));
  });

  it('SIGHUP\'s re-read applies a rotation at once, ahead of the watcher', async () => {
    const up = await upstreamWith();
    const pair = installPair(tempDir(), pki.clientA, 'rename');
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, cert: pair.cert, key: pair.key } }]);
    expect(cnOf(await get(app))).toBe('client-a');
    pair.rotate(pki.clientB);
    app.app.refreshFiles();
    // Looked at in the same synchronous stretch as the call: the watcher cannot have run in between.
    expect(app.logs.lines.find((l) => l.msg === 'certificate reloaded' && l.subject === 'CN=client-b')).toMatchObject({ file: pair.cert });
    expect(cnOf(await get(app))).toBe('client-b');
  });

  it('a half-written pair does not break traffic: the old pair serves until the new one is consistent', async () => {
    const up = await upstreamWith();
    const pair = installPair(tempDir(), pki.clientA, 'rename');
    const app = await legate([{ upstream: up.url, tls: { ca: pki.ca.cert, cert: pair.cert, key: pair.key } }]);
    const traffic = keepCalling(app, 2);
    cleanup.push(() => traffic.stop());
    await waitFor(() => (traffic.all().length >= 10 ? true : undefined), 'traffic before the rotation');

    pair.rotate(pki.clientB, 'cert');
    const warning = await waitFor(
      () => app.logs.lines.find((l) => l.level === 40 && Array.isArray(l.files) && l.files.includes(pair.key)),
      'the half-written pair warning',
    );
    expect(String(warning.problem)).toBe(`the private key in ${pair.key} does not match the certificate in ${pair.cert}`);
    const afterWarning = traffic.all().length;
    await waitFor(() => (traffic.all().length >= afterWarning + 20 ? true : undefined), 'traffic after the warning');
    expect(traffic.all().slice(afterWarning).map((o) => o.cn)).toEqual(Array(traffic.all().length - afterWarning).fill('client-a'));

    pair.rotate(pki.clientB, 'key');
    await waitFor(() => (up.requests.at(-1) === 'client-b' ? true : undefined), 'the new identity upstream', 10_000);
    await traffic.stop();
    expect(traffic.all().filter((o) => o.status !== 200 || o.attempts !== '1')).toEqual([]);
  });
});

describe('through the real CLI', () => {
  let cli: CliProcess | undefined;
  afterAll(async () => {
    await cli?.stop();
  });

  it('mTLS succeeds, a TLS failure is a 502 with its reason, and a rotation on disk is picked up', async () => {
    expect(existsSync(CLI), `${CLI} is missing: run npm run build`).toBe(true);
    const up = await upstreamWith();
    const stranger = await upstreamWith({ server: pki.serverOtherCa });
    const pair = installPair(tempDir(), pki.clientA, 'kubernetes');
    cli = await startCli(
      yamlFor([
        { name: 'payments', prefix: '/payments', upstream: up.url, tls: { ca: pki.ca.cert, cert: pair.cert, key: pair.key } },
        { name: 'stranger', prefix: '/stranger', upstream: stranger.url, tls: { ca: pki.ca.cert, cert: pair.cert, key: pair.key } },
      ]),
    );
    const proc = cli;
    const ok = await request({ port: proc.proxyPort, path: '/payments/charge' });
    expect(ok.status).toBe(200);
    expect(cnOf(ok)).toBe('client-a');

    expectTlsFailure(await request({ port: proc.proxyPort, path: '/stranger/x' }), /unknown CA: .*CN=Unrelated Test CA/);

    pair.rotate(pki.clientB);
    const line = await proc.waitForLine((l) => l.msg === 'certificate reloaded' && l.subject === 'CN=client-b', 'certificate reloaded');
    expect(line.file).toBe(pair.cert);
    const rotated = await waitFor(async () => {
      const r = await request({ port: proc.proxyPort, path: '/payments/charge' });
      return r.status === 200 && cnOf(r) === 'client-b' ? r : undefined;
    }, 'the new identity through the CLI');
    expect(rotated.headers['x-legate-route']).toBe('payments');
    expect(proc.stdout()).not.toContain('PRIVATE KEY');
  });
});
