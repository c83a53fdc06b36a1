/**
 * DNS discovery against a real DNS server (dns2 on 127.0.0.1, a random
 * port) whose records change during the test: endpoints per A/AAAA record
 * and per SRV target, reuse of endpoint objects, TTL-driven refresh, the
 * last good set kept on failure, the 502 before any success, and the
 * lifecycle across reloads and stop.
 */
import { UpstreamPool } from '../../src/runtime/upstream-pool.js';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import type { DiscoverySettings, EndpointSettings } from '../../src/config/model.js';
import type { LegateError } from '../../src/errors.js';
import type { ProxyRequest } from '../../src/proxy/types.js';
import { createDiscoveryGateLayer, discoveryOf, RouteDiscovery, type DiscoveryOptions } from '../../src/runtime/discovery.js';
import { Balancer } from '../../src/runtime/route-runtime.js';
import { startDnsServer, type TestDnsServer } from '../helpers/dns.js';
import { LogSink, startApp, waitFor } from '../helpers/legate.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function dnsServer(): Promise<TestDnsServer> {
  const d = await startDnsServer();
  cleanups.push(() => d.close());
  return d;
}

function discovery(dns: TestDnsServer, url: string, settings: Partial<DiscoverySettings> = {}, extra: Partial<DiscoveryOptions> = {}) {
  const logs = new LogSink();
  const endpoint: EndpointSettings = { url: new URL(url), weight: 1 };
  const d = new RouteDiscovery({
    route: 'billing',
    settings: { type: 'dns', refreshMs: 60_000, resolver: { host: '127.0.0.1', port: dns.port, text: dns.address }, ...settings },
    endpoint,
    agent: () => new UpstreamPool(),
    logger: pino({ level: 'debug' }, logs),
    queryTimeoutMs: 500,
    ...extra,
  });
  cleanups.push(() => d.dispose());
  return { d, logs };
}

describe('RouteDiscovery', () => {
  it('makes one endpoint per A and AAAA record: connects to the address, keeps the URL authority, path and scheme', async () => {
    const dns = await dnsServer();
    dns.setA('billing.internal', ['127.0.0.3', '127.0.0.2']);
    dns.setAAAA('billing.internal', ['::1']);
    const { d } = discovery(dns, 'http://billing.internal:8080/api/');
    d.start();
    await d.settled();
    expect(d.endpoints.map((e) => e.key)).toEqual(['127.0.0.2:8080', '127.0.0.3:8080', '[::1]:8080']);
    const v6 = d.endpoints[2];
    expect(v6?.hostname).toBe('::1');
    for (const e of d.endpoints) {
      expect(e.authority).toBe('billing.internal:8080');
      expect(e.basePath).toBe('/api');
      expect(e.protocol).toBe('http:');
      expect(e.port).toBe(8080);
    }
  });

  it('keeps the endpoint objects (and so their breakers) of addresses that stay, and logs what was added and removed', async () => {
    const dns = await dnsServer();
    dns.setA('billing.internal', ['127.0.0.2', '127.0.0.3']);
    const { d, logs } = discovery(dns, 'http://billing.internal');
    const balancer = new Balancer([]);
    d.attach(balancer);
    d.start();
    await d.settled();
    expect(balancer.endpoints.map((e) => e.key)).toEqual(['127.0.0.2:80', '127.0.0.3:80']);
    const kept = balancer.endpoints[1];
    const breakerLike = kept?.state.get('marker', () => ({ id: 'breaker of 127.0.0.3' }));

    dns.setA('billing.internal', ['127.0.0.3', '127.0.0.4']);
    await d.refresh();
    expect(balancer.endpoints.map((e) => e.key)).toEqual(['127.0.0.3:80', '127.0.0.4:80']);
    expect(balancer.endpoints[0]).toBe(kept);
    expect(balancer.endpoints[0]?.state.get('marker', () => ({ id: 'new' }))).toBe(breakerLike);
    const change = logs.lines.filter((l) => l.route === 'billing' && Array.isArray(l.added));
    expect(change.at(-1)).toMatchObject({ level: 30, name: 'billing.internal', added: ['127.0.0.4:80'], removed: ['127.0.0.2:80'] });
    expect(d.stats).toMatchObject({ endpointsAdded: 3, endpointsRemoved: 1, failures: 0 });

    // An unchanged answer changes nothing and logs nothing.
    const before = change.length;
    await d.refresh();
    expect(balancer.endpoints[0]).toBe(kept);
    expect(logs.lines.filter((l) => Array.isArray(l.added))).toHaveLength(before);
  });

  it('keeps the last good set when DNS stops answering, and says so', async () => {
    const dns = await dnsServer();
    dns.setA('billing.internal', ['127.0.0.2', '127.0.0.3']);
    const { d, logs } = discovery(dns, 'http://billing.internal');
    d.start();
    await d.settled();
    await dns.close();
    await d.refresh();
    expect(d.endpoints.map((e) => e.key)).toEqual(['127.0.0.2:80', '127.0.0.3:80']);
    expect(d.lastError).toMatch(/ECONNREFUSED|ETIMEOUT/);
    const warning = logs.lines.find((l) => l.msg === 'DNS lookup failed; keeping the last good set of 2 endpoints');
    expect(warning).toMatchObject({ level: 40, route: 'billing', name: 'billing.internal', endpoints: ['127.0.0.2:80', '127.0.0.3:80'] });
    // A failed lookup is retried sooner than the refresh interval.
    expect(d.scheduled).toBe(true);
  });

  it('treats a name with no address as a failed lookup: no endpoints before the first success, the last set after one', async () => {
    const dns = await dnsServer();
    const { d, logs } = discovery(dns, 'http://billing.internal');
    d.start();
    await d.settled();
    expect(d.endpoints).toEqual([]);
    expect(d.resolved).toBe(false);
    expect(logs.lines.some((l) => l.msg === 'DNS lookup failed and no lookup has succeeded yet: requests on this route get 502 until one does')).toBe(true);
    dns.setA('billing.internal', ['127.0.0.2']);
    await d.refresh();
    expect(d.endpoints.map((e) => e.key)).toEqual(['127.0.0.2:80']);
    expect(logs.lines.some((l) => l.msg === 'DNS lookup succeeded again')).toBe(true);
    dns.setA('billing.internal', []);
    await d.refresh();
    expect(d.endpoints.map((e) => e.key)).toEqual(['127.0.0.2:80']);
    expect(d.lastError).toBe('billing.internal has no A or AAAA records (A: ENODATA, AAAA: ENODATA)');
  });

  it('re-resolves when the record TTL is shorter than refresh', async () => {
    const dns = await dnsServer();
    dns.setA('billing.internal', ['127.0.0.2'], 1);
    const { d } = discovery(dns, 'http://billing.internal', { refreshMs: 60_000 }, { minRefreshMs: 10 });
    d.start();
    await d.settled();
    dns.setA('billing.internal', ['127.0.0.5'], 1);
    await waitFor(() => (d.endpoints[0]?.key === '127.0.0.5:80' ? true : undefined), 'a TTL-driven refresh', 5_000);
  });

  it('dns-srv: the lowest priority targets, with their ports and weights, each resolved to its addresses', async () => {
    const dns = await dnsServer();
    dns.setSrv('_http._tcp.billing.internal', [
      { target: 'a.billing.internal', port: 9001, weight: 3, priority: 10 },
      { target: 'b.billing.internal', port: 9002, weight: 1, priority: 10 },
      { target: 'backup.billing.internal', port: 9003, weight: 1, priority: 20 },
    ]);
    dns.setA('a.billing.internal', ['127.0.0.2']);
    dns.setA('b.billing.internal', ['127.0.0.3', '127.0.0.4']);
    dns.setA('backup.billing.internal', ['127.0.0.9']);
    const { d } = discovery(dns, 'https://billing.internal/v1', { type: 'dns-srv', name: '_http._tcp.billing.internal' });
    d.start();
    await d.settled();
    expect(d.endpoints.map((e) => [e.key, e.weight])).toEqual([
      ['127.0.0.2:9001', 3],
      ['127.0.0.3:9002', 1],
      ['127.0.0.4:9002', 1],
    ]);
    expect(d.endpoints.every((e) => e.authority === 'billing.internal' && e.protocol === 'https:' && e.basePath === '/v1')).toBe(true);
    // A weight change keeps the endpoint's state but makes a new endpoint object.
    const state = d.endpoints[0]?.state;
    dns.setSrv('_http._tcp.billing.internal', [{ target: 'a.billing.internal', port: 9001, weight: 7, priority: 10 }]);
    await d.refresh();
    expect(d.endpoints.map((e) => [e.key, e.weight])).toEqual([['127.0.0.2:9001', 7]]);
    expect(d.endpoints[0]?.state).toBe(state);
  });

  it('stops for good on dispose, even with a lookup in flight: no timer, no update', async () => {
    const dns = await dnsServer();
    dns.setA('billing.internal', ['127.0.0.2'], 1);
    const { d } = discovery(dns, 'http://billing.internal', {}, { minRefreshMs: 10 });
    d.start();
    await d.settled();
    expect(d.scheduled).toBe(true);
    dns.setA('billing.internal', ['127.0.0.3'], 1);
    const inFlight = d.refresh();
    d.dispose();
    await inFlight;
    expect(d.scheduled).toBe(false);
    expect(d.endpoints.map((e) => e.key)).toEqual(['127.0.0.2:80']);
  });
});

describe('discovery in a generation', () => {
  const yaml = (dns: TestDnsServer, extra = '') =>
    `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:\n  - name: billing\n    upstream:\n      url: http://billing.internal:8080\n      discovery: { type: dns, refresh: 1m, resolver: "${dns.address}" }\n${extra}`;

  it('keeps the discovery and its endpoints across a reload with the same policy, seeds a changed route, and stops on stop', async () => {
    const dns = await dnsServer();
    dns.setA('billing.internal', ['127.0.0.2', '127.0.0.3']);
    const a = await startApp(yaml(dns));
    cleanups.push(() => a.stop());
    const route = () => a.app.current().routes[0];
    await waitFor(() => (route()?.balancer.endpoints.length === 2 ? true : undefined), 'the first lookup');
    const first = discoveryOf(route() as NonNullable<ReturnType<typeof route>>);
    const endpoints = route()?.balancer.endpoints;

    const same = loadConfigText(yaml(dns), a.app.config.file);
    if (!same.ok) throw new Error('config');
    await a.app.apply(same.config);
    const kept = route();
    expect(kept && discoveryOf(kept)).toBe(first);
    expect(kept?.balancer.endpoints).toEqual(endpoints);
    expect(kept?.balancer.endpoints[0]).toBe(endpoints?.[0]);

    // The old generation's balancer no longer follows the discovery; the new one does.
    dns.setA('billing.internal', ['127.0.0.4']);
    await first?.refresh();
    expect(kept?.balancer.endpoints.map((e) => e.key)).toEqual(['127.0.0.4:8080']);

    const changed = loadConfigText(yaml(dns, '    retry: { retries: 1 }\n'), a.app.config.file);
    if (!changed.ok) throw new Error('config');
    await a.app.apply(changed.config);
    const fresh = route();
    const second = fresh && discoveryOf(fresh);
    expect(second).not.toBe(first);
    // Seeded from the old discovery: no window without endpoints.
    expect(fresh?.balancer.endpoints.map((e) => e.key)).toEqual(['127.0.0.4:8080']);
    expect(first?.scheduled).toBe(false);
    await second?.settled();
    expect(second?.scheduled).toBe(true);
    await a.stop();
    expect(second?.scheduled).toBe(false);
  });

  it('answers 502 upstream-connect-failure with the reason until the first lookup succeeds', async () => {
    const dns = await dnsServer();
    const a = await startApp(yaml(dns));
    cleanups.push(() => a.stop());
    const route = a.app.current().routes[0];
    if (route === undefined) throw new Error('route');
    await waitFor(() => discoveryOf(route)?.lastError, 'a failed lookup');
    const gate = createDiscoveryGateLayer()(() => Promise.reject(new Error('must not be called')));
    const err = (await gate({ route } as ProxyRequest).catch((e: unknown) => e)) as LegateError;
    expect(err.code).toBe('upstream-connect-failure');
    expect(err.status).toBe(502);
    expect(err.message).toBe(
      'route billing has no endpoint yet: DNS discovery of billing.internal has not succeeded (last error: billing.internal has no A or AAAA records (A: ENOTFOUND, AAAA: ENOTFOUND))',
    );
    dns.setA('billing.internal', ['127.0.0.2']);
    await discoveryOf(route)?.refresh();
    const passed = await gate({ route } as ProxyRequest).catch((e: unknown) => e);
    expect((passed as Error).message).toBe('must not be called');
  });
});
