/**
 * The connection pool under the forwarder, against real sockets: reuse, and
 * above all that a connection legate cuts goes away at once and completely,
 * which undici's own Pool does not do (undici #5845: an aborted request in
 * flight makes its Client dial a replacement nobody uses; undici #386: a
 * request waiting for its connection cannot stop the dialling).
 */
import type { Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import { request, type Dispatcher } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { classifyUpstreamFailure } from '../../src/errors.js';
import { CONNECT_TIMEOUT_MS, UpstreamPool, type Connection } from '../../src/runtime/upstream-pool.js';
import { TlsAgent } from '../../src/tls/tls-agent.js';
import { waitFor } from '../helpers/legate.js';
import { startRawUpstream, type RawUpstream } from '../helpers/raw-upstream.js';

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function raw(behaviour: Parameters<typeof startRawUpstream>[0]): Promise<RawUpstream> {
  const up = await startRawUpstream(behaviour);
  cleanup.push(() => up.close());
  return up;
}

function pool(p: UpstreamPool = new UpstreamPool()): UpstreamPool {
  cleanup.push(() => p.destroy());
  return p;
}

const answer = (extra = '') => (socket: Socket) => {
  socket.write(`HTTP/1.1 200 OK\r\ncontent-length: 2\r\n${extra}\r\nok`);
};

/** One GET on `conn`, read to the end; the pool gets the connection back. */
async function get(p: UpstreamPool, conn: Connection): Promise<number> {
  // undici's `request` (its package index) on legate's Client, which is loaded without the convenience API.
  const res = await request(`${conn.origin}/`, { dispatcher: conn.client });
  await res.body.text();
  p.release(conn);
  return res.statusCode;
}

/** A dispatch that never settles by itself (the upstream stalls); errors are collected. */
function hang(conn: Connection): Error[] {
  const errors: Error[] = [];
  const handler: Dispatcher.DispatchHandler = {
    onRequestStart: () => undefined,
    onResponseError: (_c, e) => errors.push(e),
  };
  conn.client.dispatch({ path: '/', method: 'GET' }, handler);
  return errors;
}

/** Every socket event the first close could trigger has run, so a redial would have shown by now. */
async function settled(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 50));
}

describe('UpstreamPool', () => {
  it('reuses the connection an exchange gave back, most recent first', async () => {
    const up = await raw((s) => {
      // Answer every request on the connection, not only the first.
      answer()(s);
      s.on('data', () => answer()(s));
    });
    const p = pool();
    const a = p.acquire(up.url);
    const b = p.acquire(up.url);
    expect(a).not.toBe(b);
    expect(await get(p, a)).toBe(200);
    expect(await get(p, b)).toBe(200);
    // b went back last: it is the one handed out next.
    expect(p.acquire(up.url)).toBe(b);
    expect(p.acquire(up.url)).toBe(a);
    expect(up.accepted()).toBe(2);
  });

  it('a connection cut mid-exchange closes, and nothing dials a replacement (undici #5845)', async () => {
    const up = await raw(undefined);
    const p = pool();
    const conn = p.acquire(up.url);
    const errors = hang(conn);
    await waitFor(() => (up.accepted() === 1 && up.received[0]?.includes('\r\n\r\n') ? true : undefined), 'the request on the wire');
    conn.destroy(new Error('per-try timeout'));
    await waitFor(() => (up.open() === 0 ? true : undefined), 'the connection closed');
    await settled();
    expect(up.accepted()).toBe(1);
    expect(p.size).toBe(0);
    expect(conn.client.destroyed).toBe(true);
    expect(errors).toHaveLength(1);
  });

  it('a connection cut while its TLS handshake is stalled closes at once, not at the connect timeout (undici #386)', async () => {
    // Accepts TCP and never says a word of TLS.
    const up = await raw(undefined);
    const material = { digest: '', fileDigests: new Map(), secureContext: createSecureContext(), certificates: [], client: undefined };
    const p = pool(new TlsAgent({ settings: {}, host: 'localhost', material }));
    const conn = p.acquire(`https://127.0.0.1:${up.port}`);
    const errors = hang(conn);
    await waitFor(() => (up.accepted() === 1 ? true : undefined), 'the connection accepted');
    const cutAt = Date.now();
    conn.destroy(new Error('deadline'));
    await waitFor(() => (up.open() === 0 ? true : undefined), 'the dialling socket closed', 1_000);
    expect(Date.now() - cutAt).toBeLessThan(1_000);
    await settled();
    expect(up.accepted()).toBe(1);
    expect(errors).toHaveLength(1);
  });

  it(`a TLS handshake that stalls fails after ${CONNECT_TIMEOUT_MS} ms as a connect failure, and its socket closes`, async () => {
    const up = await raw(undefined);
    const material = { digest: '', fileDigests: new Map(), secureContext: createSecureContext(), certificates: [], client: undefined };
    const p = pool(new TlsAgent({ settings: {}, host: 'localhost', material }));
    const began = Date.now();
    const errors = hang(p.acquire(`https://127.0.0.1:${up.port}`));
    await waitFor(() => (errors.length === 1 ? true : undefined), 'the connect timeout', CONNECT_TIMEOUT_MS + 3_000);
    expect(Date.now() - began).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 50);
    expect(classifyUpstreamFailure(errors[0], `127.0.0.1:${up.port}`).code).toBe('upstream-connect-failure');
    await waitFor(() => (up.open() === 0 ? true : undefined), 'the stalled socket closed', 1_000);
  }, CONNECT_TIMEOUT_MS + 5_000);

  it('close(): idle connections close now, a busy one when its exchange ends', async () => {
    let respond: (() => void) | undefined;
    const up = await raw((s) => {
      if (respond === undefined) respond = () => answer()(s);
      else answer()(s);
    });
    const p = pool();
    const busy = p.acquire(up.url);
    const idle = p.acquire(up.url);
    const pending = get(p, busy);
    expect(await get(p, idle)).toBe(200);
    expect(up.open()).toBe(2);
    p.close();
    await waitFor(() => (up.open() === 1 ? true : undefined), 'the idle connection closed');
    respond?.();
    expect(await pending).toBe(200);
    await waitFor(() => (up.open() === 0 ? true : undefined), 'the busy connection closed after its exchange');
    expect(p.size).toBe(0);
  });

  it('an idle connection the upstream closes leaves the pool', async () => {
    const up = await raw((s) => {
      answer('connection: close\r\n')(s);
      s.end();
    });
    const p = pool();
    const conn = p.acquire(up.url);
    expect(await get(p, conn)).toBe(200);
    await waitFor(() => (p.size === 0 ? true : undefined), 'the closed connection dropped from the pool');
    expect(p.acquire(up.url)).not.toBe(conn);
  });
});
