/**
 * DNS service discovery (SPEC §12) through real sockets: a DNS server started
 * here on 127.0.0.1, one upstream per loopback address (127.0.0.2, .3, …) on
 * a shared port, and records changed while traffic flows. Through the real
 * CLI first, as a user would try it; in-process where the discovery's own
 * state shows that lookups really failed while the last set kept serving.
 */
import { once } from 'node:events';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { createCa } from '../helpers/certs.js';
import { request, type Reply } from '../helpers/client.js';
import { startDnsServer, startLoopbackUpstreams, type LoopbackUpstreams, type TestDnsServer } from '../helpers/dns.js';
import { startApp, startCli, tempDir, waitFor, type CliProcess } from '../helpers/legate.js';
import { discoveryOf } from '../../src/runtime/discovery.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function dns(): Promise<TestDnsServer> {
  const d = await startDnsServer();
  cleanups.push(() => d.close());
  return d;
}
async function upstreams(addresses: string[]): Promise<LoopbackUpstreams> {
  const u = await startLoopbackUpstreams(addresses);
  cleanups.push(() => u.close());
  return u;
}

const NAME = 'billing.internal';

function config(d: TestDnsServer, port: number, refresh = '200ms'): string {
  return `listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: billing
    upstream:
      url: http://${NAME}:${port}/api
      discovery: { type: dns, refresh: ${refresh}, resolver: "${d.address}" }
    retry: { retries: 0 }
`;
}

/** Sends requests one after another until stopped; every reply is kept. */
function traffic(port: number): { replies: Reply[]; stop: () => Promise<void> } {
  const replies: Reply[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) replies.push(await request({ port, path: '/charge' }));
  })();
  return {
    replies,
    stop: async () => {
      stopped = true;
      await loop;
    },
  };
}

const addressOf = (r: Reply): string => r.json<{ address: string }>().address;

/** Waits until `n` more replies arrived after the current count, and returns them. */
async function next(t: { replies: Reply[] }, n: number, what: string): Promise<Reply[]> {
  const from = t.replies.length;
  await waitFor(() => (t.replies.length >= from + n ? true : undefined), what);
  return t.replies.slice(from, from + n);
}

describe('DNS discovery through the CLI', () => {
  it('spreads traffic over every A record, follows record changes while traffic flows, and keeps the last set when DNS stops', async () => {
    const d = await dns();
    const ups = await upstreams(['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']);
    d.setA(NAME, ['127.0.0.2', '127.0.0.3', '127.0.0.4']);
    const legate: CliProcess = await startCli(config(d, ups.port));
    cleanups.push(() => legate.stop('SIGKILL'));
    await waitFor(async () => ((await request({ port: legate.proxyPort, path: '/ready' })).status === 200 ? true : undefined), 'the first lookup');

    const t = traffic(legate.proxyPort);
    try {
      // Equal weights, round robin: 30 requests hit each of the three addresses 10 times.
      const spread = await next(t, 30, 'traffic over three endpoints');
      const counts = new Map<string, number>();
      for (const r of spread) counts.set(addressOf(r), (counts.get(addressOf(r)) ?? 0) + 1);
      expect(Object.fromEntries(counts)).toEqual({ '127.0.0.2': 10, '127.0.0.3': 10, '127.0.0.4': 10 });
      // Connected to the address, spoken to as the name.
      expect(spread.every((r) => r.json<{ host: string }>().host === `${NAME}:${ups.port}`)).toBe(true);

      // A record removed, another added, while requests keep flowing.
      d.setA(NAME, ['127.0.0.2', '127.0.0.4', '127.0.0.5']);
      await waitFor(() => (t.replies.slice(-3).some((r) => r.status === 200 && addressOf(r) === '127.0.0.5') ? true : undefined), 'the new address to take traffic');
      const after = await next(t, 30, 'traffic after the change');
      expect(new Set(after.map(addressOf))).toEqual(new Set(['127.0.0.2', '127.0.0.4', '127.0.0.5']));
      const removedCount = ups.byAddress.get('127.0.0.3')?.count;
      await next(t, 30, 'more traffic');
      expect(ups.byAddress.get('127.0.0.3')?.count).toBe(removedCount);

      // DNS fails (SERVFAIL, seen failing here), then stops altogether: the last good set keeps serving.
      d.serverFailure(true);
      const from = t.replies.length;
      await waitFor(() => (d.queries.filter((q) => q === `SERVFAIL A ${NAME}`).length >= 2 ? true : undefined), 'lookups answered SERVFAIL');
      await d.close();
      // Closed: refused at once. A second's worth of traffic spans several refresh periods (200 ms).
      const closedAt = Date.now();
      await waitFor(() => (Date.now() - closedAt >= 1_000 ? true : undefined), 'a second of traffic with DNS down');
      const during = t.replies.slice(from);
      expect(during.length).toBeGreaterThan(10);
      expect(new Set(during.map(addressOf))).toEqual(new Set(['127.0.0.2', '127.0.0.4', '127.0.0.5']));
    } finally {
      await t.stop();
    }
    expect(t.replies.every((r) => r.status === 200)).toBe(true);
    const access = legate.lines.filter((l) => l.msg === 'access' && l.path === '/charge');
    expect(access.some((l) => l.upstream === `127.0.0.5:${ups.port}`)).toBe(true);
  });
});

describe('DNS discovery in-process', () => {
  it('answers 502 upstream-connect-failure saying why until the name resolves, then serves', async () => {
    const d = await dns();
    const ups = await upstreams(['127.0.0.2']);
    const l = await startApp(config(d, ups.port));
    cleanups.push(() => l.stop());
    const r = await request({ port: l.proxyPort, path: '/early' });
    expect(r.status).toBe(502);
    expect(r.headers['x-legate-error']).toBe('upstream-connect-failure');
    expect(r.json<{ message: string }>().message).toMatch(/^route billing has no endpoint yet: DNS discovery of billing\.internal has not succeeded/);
    expect(ups.byAddress.get('127.0.0.2')?.count).toBe(0);
    d.setA(NAME, ['127.0.0.2']);
    await waitFor(async () => ((await request({ port: l.proxyPort, path: '/late' })).status === 200 ? true : undefined), 'the name to resolve');
  });

  it('keeps serving the last good set while lookups fail, and each endpoint keeps its own breaker', async () => {
    const d = await dns();
    const ups = await upstreams(['127.0.0.2', '127.0.0.3']);
    d.setA(NAME, ['127.0.0.2', '127.0.0.3']);
    const l = await startApp(config(d, ups.port));
    cleanups.push(() => l.stop());
    const route = l.app.current().routes[0];
    if (route === undefined) throw new Error('route');
    await waitFor(() => (route.balancer.endpoints.length === 2 ? true : undefined), 'the first lookup');
    const endpoints = route.balancer.endpoints;
    await d.close();
    const discovery = discoveryOf(route);
    const failures = discovery?.stats.failures ?? 0;
    await waitFor(() => ((discovery?.stats.failures ?? 0) >= failures + 2 ? true : undefined), 'two failed lookups');
    expect(discovery?.lastError).toMatch(/ECONNREFUSED/);
    expect(route.balancer.endpoints).toEqual(endpoints);
    const replies = await Promise.all(Array.from({ length: 10 }, () => request({ port: l.proxyPort, path: '/x' })));
    expect(replies.every((r) => r.status === 200)).toBe(true);
    expect(new Set(replies.map(addressOf))).toEqual(new Set(['127.0.0.2', '127.0.0.3']));
    // One breaker per discovered endpoint, each created on the endpoint's own state.
    const breakers = route.balancer.endpoints.map((e) => e.state.get<unknown>('breaker', () => undefined));
    expect(breakers.every((b) => b !== undefined)).toBe(true);
    expect(breakers[0]).not.toBe(breakers[1]);
  });

  it('https: connects to the discovered address but sends the name as SNI and checks the certificate against it', async () => {
    const d = await dns();
    const dir = tempDir();
    const ca = createCa(dir, 'discovery test CA');
    const leaf = ca.issue({ cn: NAME, sans: [`DNS:${NAME}`], usage: 'server' });
    const seen: Array<{ servername: string | false | null; host: string | undefined }> = [];
    const server = https.createServer({ cert: leaf.certPem, key: leaf.keyPem }, (req, res) => {
      seen.push({ servername: (req.socket as TLSSocket).servername, host: req.headers.host });
      res.end('secure');
    });
    server.listen(0, '127.0.0.2');
    await once(server, 'listening');
    cleanups.push(async () => {
      server.closeAllConnections();
      server.close();
      if (server.listening) await once(server, 'close');
    });
    const port = (server.address() as AddressInfo).port;
    d.setA(NAME, ['127.0.0.2']);
    const l = await startApp(`listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: billing
    upstream:
      url: https://${NAME}:${port}
      discovery: { type: dns, refresh: 1m, resolver: "${d.address}" }
    tls: { ca: ${ca.cert} }
    retry: { retries: 0 }
`);
    cleanups.push(() => l.stop());
    const r = await waitFor(async () => {
      const reply = await request({ port: l.proxyPort, path: '/' });
      return reply.status === 200 ? reply : undefined;
    }, 'a response over TLS');
    expect(r.body).toBe('secure');
    expect(seen[0]).toEqual({ servername: NAME, host: `${NAME}:${port}` });
  });
});
