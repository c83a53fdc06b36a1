import { X509Certificate } from 'node:crypto';
import { copyFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadTlsMaterial, type MaterialResult, type TlsMaterial } from '../../src/tls/material.js';
import { createTestPki, type TestPki } from '../helpers/certs.js';
import { tempDir } from '../helpers/legate.js';

let pki: TestPki;
beforeAll(() => {
  pki = createTestPki();
});

function ok(r: MaterialResult): TlsMaterial {
  if (!r.ok) throw new Error(`expected usable material, got: ${r.problem}`);
  return r.material;
}

function problem(r: MaterialResult): string {
  if (r.ok) throw new Error('expected the material to be refused');
  return r.problem;
}

/** The base64 body of a PEM key: what must never appear in a message. */
function keyBody(pem: string): string {
  return pem.split('\n').filter((l) => l !== '' && !l.startsWith('-----')).join('').slice(0, 40);
}

describe('loadTlsMaterial', () => {
  it('loads a CA and a client pair and lists every certificate with its expiry', () => {
    const m = ok(loadTlsMaterial({ ca: pki.ca.cert, cert: pki.clientA.cert, key: pki.clientA.key }));
    const x = new X509Certificate(pki.clientA.certPem);
    expect(m.client).toMatchObject({ file: pki.clientA.cert, subject: 'CN=client-a', issuer: 'CN=Legate Test CA', role: 'client' });
    expect(m.client?.notAfter).toBe(Math.floor(Date.parse(x.validTo) / 1000));
    expect(m.certificates.map((c) => [c.role, c.subject])).toEqual([
      ['ca', 'CN=Legate Test CA'],
      ['client', 'CN=client-a'],
    ]);
    expect(m.fileDigests.size).toBe(3);
  });

  it('refuses a certificate with the key of another one (a rotation caught half-way), naming both files', () => {
    const p = problem(loadTlsMaterial({ cert: pki.clientB.cert, key: pki.clientA.key }));
    expect(p).toBe(`the private key in ${pki.clientA.key} does not match the certificate in ${pki.clientB.cert}`);
  });

  it('refuses an unreadable file, naming it', () => {
    const missing = path.join(tempDir(), 'gone.pem');
    expect(problem(loadTlsMaterial({ cert: missing, key: pki.clientA.key }))).toBe(`cannot read ${missing}: ENOENT`);
  });

  it('refuses a truncated key without quoting it', () => {
    const dir = tempDir();
    const key = path.join(dir, 'key.pem');
    writeFileSync(key, pki.clientA.keyPem.slice(0, 120));
    const p = problem(loadTlsMaterial({ cert: pki.clientA.cert, key }));
    expect(p).toContain(`${key} is not a usable private key`);
    expect(p).not.toContain(keyBody(pki.clientA.keyPem));
  });

  it('refuses a certificate file that holds a key, and a CA file with no certificate', () => {
    expect(problem(loadTlsMaterial({ cert: pki.clientA.key, key: pki.clientA.key }))).toBe(`${pki.clientA.key} holds no PEM certificate`);
    const dir = tempDir();
    const ca = path.join(dir, 'ca.pem');
    writeFileSync(ca, 'not a certificate\n');
    expect(problem(loadTlsMaterial({ ca }))).toBe(`${ca} holds no PEM certificate`);
  });

  it('refuses a certificate without its key', () => {
    expect(problem(loadTlsMaterial({ cert: pki.clientA.cert }))).toMatch(/must be given together/);
  });

  it('gives the same digest for the same bytes and a new one when a file changes', () => {
    const dir = tempDir();
    const cert = path.join(dir, 'tls.crt');
    const key = path.join(dir, 'tls.key');
    copyFileSync(pki.clientA.cert, cert);
    copyFileSync(pki.clientA.key, key);
    const first = ok(loadTlsMaterial({ cert, key })).digest;
    expect(ok(loadTlsMaterial({ cert, key })).digest).toBe(first);
    copyFileSync(pki.clientB.cert, cert);
    const half = loadTlsMaterial({ cert, key });
    expect(half.ok).toBe(false);
    expect(half.ok ? '' : half.digest).not.toBe(first);
    copyFileSync(pki.clientB.key, key);
    expect(ok(loadTlsMaterial({ cert, key })).digest).not.toBe(first);
  });

  it('needs no files for a serverName / minVersion only identity', () => {
    const m = ok(loadTlsMaterial({ serverName: 'payments.internal', minVersion: 'TLSv1.3' }));
    expect(m.certificates).toEqual([]);
    expect(m.client).toBeUndefined();
  });
});
