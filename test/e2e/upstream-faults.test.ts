/**
 * Upstreams that fail the way real ones do, behind the real CLI: each failure
 * maps to its SPEC §5 code before the response starts, and after it started
 * the app's connection is cut so that the truncation shows (a short
 * Content-Length body, or chunks without the last one), never a response that
 * looks complete. The app side is read byte by byte from a raw socket.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { routesYaml } from '../helpers/faulty.js';
import { startCli, type CliProcess } from '../helpers/legate.js';
import { brokenHttp, header, parseResponses, startRawUpstream, wire, type RawBehaviour, type RawUpstream, type WireResponse } from '../helpers/raw-upstream.js';
import { deadPort } from '../helpers/upstream.js';

/** The route deadline: long enough for a loaded machine, short enough that the suite stays quick. */
const TIMEOUT_MS = 800;

let cli: CliProcess;
const uppers = new Map<string, RawUpstream>();

const faults: Record<string, RawBehaviour | undefined> = {
  'reset-before-head': brokenHttp.resetBeforeHead,
  'reset-mid-length': brokenHttp.resetMidBodyLength,
  'reset-mid-chunked': brokenHttp.resetMidBodyChunked,
  'never-ends': brokenHttp.neverEnds,
  'never-answers': undefined,
  garbage: brokenHttp.garbage,
  'other-protocol': brokenHttp.otherProtocol,
  'oversized-headers': brokenHttp.oversizedHeaders,
  'switching-protocols': brokenHttp.unaskedSwitchingProtocols,
  'invalid-reason': brokenHttp.invalidReasonPhrase,
  'length-and-chunked': brokenHttp.lengthAndChunked,
};

beforeAll(async () => {
  const routes: Record<string, unknown>[] = [];
  // Each failure is seen as it is: one try, no breaker in the way.
  const base = { retry: { retries: 0 }, circuitBreaker: { enabled: false }, timeout: `${TIMEOUT_MS}ms` };
  for (const [name, behaviour] of Object.entries(faults)) {
    const up = await startRawUpstream(behaviour);
    uppers.set(name, up);
    routes.push({ name, match: { pathPrefix: `/${name}` }, upstream: up.url, ...base });
  }
  const stalledTls = await startRawUpstream(undefined);
  uppers.set('tls-stall', stalledTls);
  routes.push(
    { name: 'tls-stall', match: { pathPrefix: '/tls-stall' }, upstream: `https://127.0.0.1:${stalledTls.port}`, ...base },
    { name: 'refused', match: { pathPrefix: '/refused' }, upstream: `http://127.0.0.1:${await deadPort()}`, ...base },
    // RFC 6761: .invalid never resolves. A generous deadline: a resolver may be slow to say so.
    { name: 'dns', match: { pathPrefix: '/dns' }, upstream: 'http://does-not-exist.invalid', ...base, timeout: '10s' },
    {
      name: 'reset-retried',
      match: { pathPrefix: '/reset-retried' },
      upstream: (uppers.get('reset-before-head') as RawUpstream).url,
      retry: { retries: 2, backoff: { base: '1ms', max: '5ms' } },
      circuitBreaker: { enabled: false },
    },
  );
  cli = await startCli(routesYaml(routes));
}, 30_000);

afterAll(async () => {
  await cli?.stop();
  for (const up of uppers.values()) await up.close();
});

/** GET /<route> on a raw socket: the one response, and how the connection ended. */
async function get(route: string, untilClose = false) {
  const x = await wire(cli.proxyPort, `GET /${route} HTTP/1.1\r\nHost: app.local\r\n\r\n`, untilClose ? { timeoutMs: 12_000 } : { responses: 1, timeoutMs: 12_000 });
  const responses = parseResponses(x.bytes);
  expect(responses, `${route}: ${x.bytes.toString('latin1').slice(0, 200)}`).toHaveLength(1);
  return { x, r: responses[0] as WireResponse };
}

function expectLegateAnswer(r: WireResponse, status: number, code: string): void {
  expect(r.status).toBe(status);
  expect(header(r, 'x-legate-error')).toBe(code);
  expect(r.complete).toBe(true);
  expect(JSON.parse(r.body.toString())).toMatchObject({ error: code, attempts: 1 });
}

describe('before the response starts: the SPEC §5 code', () => {
  it.each([
    ['refused', 502, 'upstream-connect-failure'],
    ['dns', 502, 'upstream-connect-failure'],
    ['reset-before-head', 502, 'upstream-reset'],
    ['garbage', 502, 'upstream-reset'],
    ['other-protocol', 502, 'upstream-reset'],
    ['oversized-headers', 502, 'upstream-reset'],
    ['length-and-chunked', 502, 'upstream-reset'],
    ['switching-protocols', 502, 'upstream-reset'],
    ['invalid-reason', 502, 'upstream-reset'],
  ] as const)('%s → %i %s', async (route, status, code) => {
    const { x, r } = await get(route);
    expectLegateAnswer(r, status, code);
    // Each of these is known at once; none may wait for the deadline (the 101 used to).
    if (route !== 'dns') expect(x.ms).toBeLessThan(TIMEOUT_MS);
    expect(header(r, 'x-legate-route')).toBe(route);
  });

  it('a reset retried twice is still 502 upstream-reset, after three tries', async () => {
    const { r } = await get('reset-retried');
    expect(r.status).toBe(502);
    expect(header(r, 'x-legate-error')).toBe('upstream-reset');
    expect(header(r, 'x-legate-attempts')).toBe('3');
  });

  it.each(['never-answers', 'tls-stall'])('%s: 504 upstream-timeout at the deadline', async (route) => {
    const before = uppers.get(route)?.accepted() ?? 0;
    const { x, r } = await get(route);
    expect(r.status).toBe(504);
    expect(header(r, 'x-legate-error')).toBe('upstream-timeout');
    expect(x.ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    expect(x.ms).toBeLessThan(TIMEOUT_MS + 700);
    expect(uppers.get(route)?.accepted()).toBe(before + 1);
    // legate let go of the stalled connection.
    await cli.waitForLine((l) => l.msg === 'access' && l.route === route && l.status === 504, 'its access line');
    expect(uppers.get(route)?.open()).toBe(0);
  });
});

describe('after the response started: the app connection is cut, visibly', () => {
  it('Content-Length: the app gets fewer bytes than announced, then the connection ends', async () => {
    const { x, r } = await get('reset-mid-length', true);
    expect(r.status).toBe(200);
    expect(header(r, 'content-length')).toBe('100000');
    expect(r.body.toString()).toBe('partial');
    expect(r.complete).toBe(false);
    expect(x.closedByPeer).toBe(true);
    const line = await cli.waitForLine((l) => l.msg === 'access' && l.route === 'reset-mid-length', 'its access line');
    expect(line).toMatchObject({ status: 200, error: 'upstream-reset' });
  });

  it('chunked: the app never gets the last chunk, then the connection ends', async () => {
    const { x, r } = await get('reset-mid-chunked', true);
    expect(r.status).toBe(200);
    expect(r.framing).toBe('chunked');
    expect(r.body.toString()).toBe('partial');
    expect(r.complete).toBe(false);
    expect(x.bytes.toString('latin1')).not.toContain('\r\n0\r\n\r\n');
    expect(x.closedByPeer).toBe(true);
  });

  it('a response that never ends is cut at the deadline', async () => {
    const { x, r } = await get('never-ends', true);
    expect(r.status).toBe(200);
    expect(r.complete).toBe(false);
    expect(x.closedByPeer).toBe(true);
    expect(x.ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    expect(x.ms).toBeLessThan(TIMEOUT_MS + 700);
    const line = await cli.waitForLine((l) => l.msg === 'access' && l.route === 'never-ends', 'its access line');
    expect(line).toMatchObject({ status: 200, error: 'upstream-timeout' });
    expect(uppers.get('never-ends')?.open()).toBe(0);
  });
});

describe('afterwards', () => {
  it('the process is alive and serving', async () => {
    expect(cli.child.exitCode).toBeNull();
    expect((await request({ port: cli.adminPort, path: '/healthz' })).status).toBe(200);
    expect(cli.stderr()).toBe('');
  });
});
