/**
 * Reads the files of one TLS identity (CA bundle, client certificate, key)
 * and turns them into a ready SecureContext, or says precisely why they
 * cannot be used. Nothing here keeps or returns key material other than
 * inside the native SecureContext.
 */
import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls, { type SecureContext } from 'node:tls';
import type { TlsSettings } from '../config/model.js';

/** One certificate legate loaded, for the expiry metric and logs. */
export interface CertificateInfo {
  readonly file: string;
  readonly subject: string;
  /** Seconds since the epoch. */
  readonly notAfter: number;
  /** `ca`: from a CA bundle; `client`: the client certificate or its chain. */
  readonly role: 'ca' | 'client';
  readonly issuer: string;
  readonly serialNumber: string;
  /** SHA-256 fingerprint: tells two certificates with the same subject apart. */
  readonly fingerprint256: string;
}

/** Usable TLS files of one identity. */
export interface TlsMaterial {
  /** Digest of every file's content: equal digests mean nothing changed. */
  readonly digest: string;
  /** Digest per file, so a reload can say which files changed. */
  readonly fileDigests: ReadonlyMap<string, string>;
  /** Built once per material so connections do not re-parse PEM files each time. */
  readonly secureContext: SecureContext;
  /** Every certificate in the CA bundle and the client certificate file. */
  readonly certificates: readonly CertificateInfo[];
  /** The client certificate (first in its file), when one is configured. */
  readonly client: CertificateInfo | undefined;
}

/** Usable material, or why the files cannot be used. */
export type MaterialResult =
  | { readonly ok: true; readonly material: TlsMaterial }
  | {
      readonly ok: false;
      /** Digest of what was read, so the same broken state is reported once. */
      readonly digest: string;
      /** Names the files and the problem; never their content. */
      readonly problem: string;
      readonly files: readonly string[];
    };

/** Reads a file; a check pass passes a caching reader so shared files are read once. */
export type FileReader = (file: string) => Buffer;

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** `CN=a\nO=b` (Node's form) as one line, for logs and metric labels. */
export function oneLineName(name: string): string {
  return name.split('\n').filter(Boolean).join(', ');
}

/** The files an identity reads, in a fixed order. */
export function materialFiles(settings: TlsSettings): string[] {
  return [settings.ca, settings.cert, settings.key].filter((f): f is string => f !== undefined);
}

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.code === 'string' && e.code.startsWith('E') && !e.code.startsWith('ERR_')) return e.code;
  // OpenSSL reasons ("bad decrypt", "unsupported") describe the problem without quoting the input.
  return (e as { reason?: unknown })?.reason !== undefined ? String((e as { reason?: unknown }).reason) : (e?.message ?? String(err));
}

function certificatesIn(file: string, pem: string, role: CertificateInfo['role']): CertificateInfo[] | string {
  const blocks = pem.match(PEM_CERT) ?? [];
  if (blocks.length === 0) return `${file} holds no PEM certificate`;
  const out: CertificateInfo[] = [];
  for (const [n, block] of blocks.entries()) {
    let x: X509Certificate;
    try {
      x = new X509Certificate(block);
    } catch (err) {
      return `${file}: certificate ${n + 1} is not valid (${describeError(err)})`;
    }
    out.push(infoOf(file, x, role));
  }
  return out;
}

/** The public facts of a certificate. */
export function infoOf(file: string, x: X509Certificate, role: CertificateInfo['role']): CertificateInfo {
  return {
    file,
    subject: oneLineName(x.subject),
    notAfter: Math.floor(Date.parse(x.validTo) / 1000),
    role,
    issuer: oneLineName(x.issuer),
    serialNumber: x.serialNumber,
    fingerprint256: x.fingerprint256,
  };
}

/**
 * Reads and checks the files of `settings`. The result is usable only when
 * every file reads, parses, the key belongs to the certificate and OpenSSL
 * accepts the set: a half-rotated pair (new certificate, old key) is refused
 * here, before it can break a single connection.
 */
export function loadTlsMaterial(settings: TlsSettings, read: FileReader = readFileSync): MaterialResult {
  const files = materialFiles(settings);
  const contents = new Map<string, Buffer>();
  const fileDigests = new Map<string, string>();
  const readProblems: string[] = [];
  for (const file of files) {
    try {
      const data = read(file);
      contents.set(file, data);
      fileDigests.set(file, sha256(data));
    } catch (err) {
      readProblems.push(`cannot read ${file}: ${describeError(err)}`);
      fileDigests.set(file, `unreadable:${describeError(err)}`);
    }
  }
  // Paths are part of the digest: the same bytes under another role are another identity state.
  const digest = sha256(files.map((f) => `${f}\0${fileDigests.get(f) ?? ''}`).join('\n'));
  const fail = (problem: string): MaterialResult => ({ ok: false, digest, problem, files });
  if (readProblems.length > 0) return fail(readProblems.join('; '));

  const certificates: CertificateInfo[] = [];
  const text = (file: string | undefined): string | undefined => (file === undefined ? undefined : contents.get(file)?.toString('utf8'));
  const caPem = text(settings.ca);
  if (settings.ca !== undefined && caPem !== undefined) {
    const cas = certificatesIn(settings.ca, caPem, 'ca');
    if (typeof cas === 'string') return fail(cas);
    certificates.push(...cas);
  }

  let client: CertificateInfo | undefined;
  const certPem = text(settings.cert);
  const keyPem = text(settings.key);
  if (settings.cert !== undefined && settings.key !== undefined && certPem !== undefined && keyPem !== undefined) {
    const chain = certificatesIn(settings.cert, certPem, 'client');
    if (typeof chain === 'string') return fail(chain);
    const leafPem = certPem.match(PEM_CERT)?.[0];
    if (leafPem === undefined) return fail(`${settings.cert} holds no PEM certificate`);
    let key;
    try {
      key = createPrivateKey(keyPem);
    } catch (err) {
      return fail(`${settings.key} is not a usable private key (${describeError(err)})`);
    }
    if (!new X509Certificate(leafPem).checkPrivateKey(key)) {
      return fail(`the private key in ${settings.key} does not match the certificate in ${settings.cert}`);
    }
    certificates.push(...chain);
    client = chain[0];
  } else if (settings.cert !== undefined || settings.key !== undefined) {
    return fail('tls.cert and tls.key must be given together');
  }

  let secureContext: SecureContext;
  try {
    secureContext = tls.createSecureContext({
      ...(caPem === undefined ? {} : { ca: caPem }),
      ...(certPem === undefined ? {} : { cert: certPem }),
      ...(keyPem === undefined ? {} : { key: keyPem }),
      ...(settings.minVersion === undefined ? {} : { minVersion: settings.minVersion }),
    });
  } catch (err) {
    return fail(`OpenSSL refused ${files.join(', ')}: ${describeError(err)}`);
  }
  return { ok: true, material: { digest, fileDigests, secureContext, certificates, client } };
}
