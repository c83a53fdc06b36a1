import { X509Certificate } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { EndpointSettings, TlsSettings } from '../../src/config/model.js';
import { AgentPool, httpAgentFactory, identityOf } from '../../src/runtime/agents.js';
import type { UpstreamPool } from '../../src/runtime/upstream-pool.js';
import { request } from 'undici';
import { TlsAgent } from '../../src/tls/tls-agent.js';
import { EXPIRY_WARNING_SECONDS, TlsAgents } from '../../src/tls/tls-agents.js';
import { tlsFactsOf } from '../../src/tls/tls-facts.js';
import { createTestPki, installPair, type Issued, type TestPki } from '../helpers/certs.js';
import { LogSink, tempDir, waitFor } from '../helpers/legate.js';
import { startTlsUpstream, type TlsUpstream } from '../helpers/tls-upstream.js';

let pki: TestPki;
let upstream: TlsUpstream;
const cleanup: Array<() => unknown> = [];

beforeAll(async () => {
  pki = createTestPki();
  upstream = await startTlsUpstream({ server: pki.server, clientCa: pki.ca.certPem });
  return () => upstream.close();
});
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function setup(opts: { now?: () => number } = {}) {
  const logs = new LogSink();
  const tls = new TlsAgents(pino({ level: 'debug' }, logs), { pollMs: 60_000, debounceMs: 30, ...opts });
  const pool = new AgentPool({ http: httpAgentFactory, https: tls.factory });
  tls.attach(pool);
  cleanup.push(() => {
    pool.destroy();
    tls.close();
  });
  return { logs, tls, pool };
}

function endpoint(tls: TlsSettings, url = upstream.url): EndpointSettings {
  return { url: new URL(url), weight: 1, tls };
}

/** One request through `pool`; resolves with the client CN the upstream saw, or rejects with the error. */
async function call(pool: UpstreamPool): Promise<string> {
  const conn = pool.acquire(`https://127.0.0.1:${upstream.port}`);
  try {
    // undici's `request` (its package index) on legate's Client, which is loaded without the convenience API.
    const res = await request(`${conn.origin}/`, { dispatcher: conn.client });
    const cn = ((await res.body.json()) as { cn: string }).cn;
    pool.release(conn);
    return cn;
  } catch (e) {
    conn.destroy();
    throw e;
  }
}

function keyBody(issued: Issued): string {
  return issued.keyPem.split('\n').filter((l) => l !== '' && !l.startsWith('-----')).join('').slice(0, 40);
}

function noKeyMaterial(logs: LogSink, ...keys: Issued[]): void {
  const all = JSON.stringify(logs.lines);
  expect(all).not.toContain('PRIVATE KEY');
  for (const k of keys) expect(all).not.toContain(keyBody(k));
}

describe('TlsAgents', () => {
  it('builds one pool per TLS identity, presenting that identity’s client certificate', async () => {
    const { pool } = setup();
    const a = endpoint({ ca: pki.ca.cert, cert: pki.clientA.cert, key: pki.clientA.key });
    const b = endpoint({ ca: pki.ca.cert, cert: pki.clientB.cert, key: pki.clientB.key });
    expect(identityOf(a)).not.toBe(identityOf(b));
    expect(pool.get(a)).not.toBe(pool.get(b));
    expect(pool.get(a)).toBe(pool.get(a));
    expect(await call(pool.get(a))).toBe('client-a');
    expect(await call(pool.get(b))).toBe('client-b');
  });

  it('reports every loaded certificate with its notAfter in seconds', () => {
    const { tls, pool } = setup();
    pool.get(endpoint({ ca: pki.ca.cert, cert: pki.clientA.cert, key: pki.clientA.key }));
    const notAfter = (i: Issued) => Math.floor(Date.parse(new X509Certificate(i.certPem).validTo) / 1000);
    const certs = tls.certificates().map((c) => ({ file: c.file, subject: c.subject, notAfter: c.notAfter }));
    expect(certs).toEqual([
      { file: pki.ca.cert, subject: 'CN=Legate Test CA', notAfter: notAfter(pki.ca) },
      { file: pki.clientA.cert, subject: 'CN=client-a', notAfter: notAfter(pki.clientA) },
    ]);
  });

  it('preload reads the certificates of https endpoints before any request, and skips http ones', () => {
    const { tls } = setup();
    expect(tls.certificates()).toEqual([]);
    tls.preload([endpoint({ cert: pki.clientA.cert, key: pki.clientA.key }), { url: new URL('http://127.0.0.1:1'), weight: 1 }]);
    expect(tls.certificates().map((c) => c.subject)).toEqual(['CN=client-a']);
  });

  it('warns at load about a certificate that expires within 7 days, and only about that one', () => {
    const { logs, pool } = setup();
    pool.get(endpoint({ ca: pki.ca.cert, cert: pki.clientExpiringSoon.cert, key: pki.clientExpiringSoon.key }));
    const warnings = logs.lines.filter((l) => l.msg === 'certificate expires within 7 days');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ level: 40, file: pki.clientExpiringSoon.cert, subject: 'CN=client-expiring' });
    expect(warnings[0]?.daysLeft).toBeGreaterThan(2);
    expect(warnings[0]?.daysLeft).toBeLessThanOrEqual(3);
  });

  it('warns on a later check when a certificate that was fine at load comes within 7 days', () => {
    let now = Date.now();
    const { logs, tls, pool } = setup({ now: () => now });
    pool.get(endpoint({ cert: pki.clientA.cert, key: pki.clientA.key }));
    expect(logs.lines.filter((l) => l.level === 40)).toEqual([]);
    const notAfterMs = Date.parse(new X509Certificate(pki.clientA.certPem).validTo);
    now = notAfterMs - EXPIRY_WARNING_SECONDS * 1000 + 60_000;
    tls.check();
    tls.check();
    expect(logs.lines.filter((l) => l.msg === 'certificate expires within 7 days').map((l) => l.subject)).toEqual(['CN=client-a']);
  });

  it('swaps in a new pool when the pair is rotated, and logs it without key material', async () => {
    const { logs, tls, pool } = setup();
    const pair = installPair(tempDir(), pki.clientA, 'rename');
    const ep = endpoint({ ca: pki.ca.cert, cert: pair.cert, key: pair.key });
    const before = pool.get(ep);
    expect(await call(before)).toBe('client-a');
    expect(tls.watchedFolders).toContain(path.dirname(pair.cert));
    pair.rotate(pki.clientB);
    const after = await waitFor(() => (pool.get(ep) !== before ? pool.get(ep) : undefined), 'the rotated pool');
    expect(await call(after)).toBe('client-b');
    const reloaded = logs.lines.find((l) => l.msg === 'certificate reloaded');
    expect(reloaded).toMatchObject({ level: 30, file: pair.cert, subject: 'CN=client-b' });
    expect(typeof reloaded?.notAfter).toBe('string');
    expect(tls.certificates().find((c) => c.file === pair.cert)?.subject).toBe('CN=client-b');
    noKeyMaterial(logs, pki.clientA, pki.clientB);
  });

  it('keeps the old pool for a half-written pair, warns once naming the files, and takes the pair once consistent', async () => {
    const { logs, tls, pool } = setup();
    const pair = installPair(tempDir(), pki.clientA, 'rename');
    const ep = endpoint({ ca: pki.ca.cert, cert: pair.cert, key: pair.key });
    const before = pool.get(ep);
    pair.rotate(pki.clientB, 'cert');
    const warning = await waitFor(() => logs.lines.find((l) => l.level === 40), 'the half-written warning');
    expect(warning.files).toEqual([pki.ca.cert, pair.cert, pair.key]);
    expect(String(warning.problem)).toContain(`does not match the certificate in ${pair.cert}`);
    tls.check();
    expect(logs.lines.filter((l) => l.level === 40)).toHaveLength(1);
    expect(pool.get(ep)).toBe(before);
    expect(await call(pool.get(ep))).toBe('client-a');
    pair.rotate(pki.clientB, 'key');
    const after = await waitFor(() => (pool.get(ep) !== before ? pool.get(ep) : undefined), 'the consistent pair');
    expect(await call(after)).toBe('client-b');
    noKeyMaterial(logs, pki.clientA, pki.clientB);
  });

  it('forgets identities a reload dropped: no watching, no certificates, no resurrection', async () => {
    const { logs, tls, pool } = setup();
    const pair = installPair(tempDir(), pki.clientA, 'rename');
    const ep = endpoint({ ca: pki.ca.cert, cert: pair.cert, key: pair.key });
    pool.get(ep);
    expect(tls.certificates()).toHaveLength(2);
    // As LegateApp.apply does after a reload that dropped the route.
    pool.retainOnly(new Set());
    tls.retain(new Set());
    expect(tls.certificates()).toEqual([]);
    expect(tls.watchedFolders).toEqual([]);
    pair.rotate(pki.clientB);
    tls.check();
    // Not swapped back into the pool: asking for it builds a fresh pool from the current files.
    expect(logs.lines.filter((l) => l.msg === 'certificate reloaded')).toEqual([]);
    expect(await call(pool.get(ep))).toBe('client-b');
  });

  it('closes every watcher and timer, and replaces nothing after close', () => {
    const { tls, pool } = setup();
    const pair = installPair(tempDir(), pki.clientA, 'rename');
    const ep = endpoint({ cert: pair.cert, key: pair.key });
    const before = pool.get(ep);
    expect(tls.active).toBe(true);
    tls.close();
    expect(tls.active).toBe(false);
    pair.rotate(pki.clientB);
    tls.check();
    expect(pool.get(ep)).toBe(before);
  });

  it('files that vanished since config load fail each request with the reason, until they come back', async () => {
    const { logs, tls, pool } = setup();
    const dir = tempDir();
    const cert = path.join(dir, 'tls.crt');
    const key = path.join(dir, 'tls.key');
    const ep = endpoint({ ca: pki.ca.cert, cert, key });
    const broken = pool.get(ep);
    expect(broken).toBeInstanceOf(TlsAgent);
    expect(logs.lines.find((l) => l.level === 50)?.problem).toBe(`cannot read ${cert}: ENOENT; cannot read ${key}: ENOENT`);
    const err = await call(broken).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as NodeJS.ErrnoException).code).toBe('LEGATE_TLS_MATERIAL');
    expect(tlsFactsOf(err)?.handshakeDone).toBe(false);
    writeFileSync(cert, pki.clientA.certPem);
    writeFileSync(key, pki.clientA.keyPem);
    tls.check();
    expect(pool.get(ep)).not.toBe(broken);
    expect(await call(pool.get(ep))).toBe('client-a');
    rmSync(dir, { recursive: true, force: true });
  });
});
