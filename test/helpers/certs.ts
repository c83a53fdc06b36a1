/**
 * Certificates generated at test time with the `openssl` CLI: no key material
 * is checked in, and validity windows (expired, not yet valid) are relative to
 * the moment the tests run.
 *
 * Keys are EC P-256: generating them takes milliseconds, where RSA would make
 * every suite that needs a PKI noticeably slower.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { tempDir } from './legate.js';

/** A certificate and its private key on disk. */
export interface Issued {
  /** PEM certificate file. */
  readonly cert: string;
  /** PEM private key file (PKCS#8). */
  readonly key: string;
  readonly certPem: string;
  readonly keyPem: string;
  /** The common name it was issued to. */
  readonly cn: string;
}

/** A certificate authority that can issue leaf certificates. */
export interface TestCa extends Issued {
  /** Issues a leaf certificate signed by this CA. */
  issue(opts: IssueOptions): Issued;
}

export interface IssueOptions {
  readonly cn: string;
  /** subjectAltName entries, e.g. `['DNS:localhost', 'IP:127.0.0.1']`. */
  readonly sans?: readonly string[];
  /** `server` (serverAuth) or `client` (clientAuth). */
  readonly usage: 'server' | 'client';
  /** Start of validity; default one hour ago (clock skew between openssl and Node does not matter then). */
  readonly notBefore?: Date;
  /** End of validity; default one year from now. */
  readonly notAfter?: Date;
  /** File name stem; defaults to the CN made file-safe. */
  readonly name?: string;
}

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

function openssl(args: readonly string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** `openssl ca` wants validity as YYYYMMDDHHMMSSZ. */
function asn1Time(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, '').replace(/\.\d{3}Z$/, 'Z');
}

function fileSafe(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

function newKey(file: string, cwd: string): void {
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file], cwd);
}

/**
 * Creates a CA in its own folder under `dir`. Leaf certificates are signed
 * with `openssl ca`, the one subcommand of OpenSSL 3.0 that accepts explicit
 * start and end dates (needed for the expired and not-yet-valid cases).
 */
export function createCa(dir: string, cn: string): TestCa {
  const caDir = path.join(dir, fileSafe(cn));
  mkdirSync(path.join(caDir, 'issued'), { recursive: true });
  writeFileSync(path.join(caDir, 'index.txt'), '');
  writeFileSync(path.join(caDir, 'serial'), `${Date.now().toString(16).padStart(16, '0')}\n`);
  writeFileSync(
    path.join(caDir, 'ca.cnf'),
    [
      '[ca]',
      'default_ca = test_ca',
      '[test_ca]',
      `dir = ${caDir}`,
      'database = $dir/index.txt',
      'new_certs_dir = $dir/issued',
      'serial = $dir/serial',
      'default_md = sha256',
      'policy = any_name',
      'unique_subject = no',
      'email_in_dn = no',
      'copy_extensions = none',
      '[any_name]',
      'commonName = supplied',
      '',
    ].join('\n'),
  );
  const key = path.join(caDir, 'ca-key.pem');
  const cert = path.join(caDir, 'ca.pem');
  newKey(key, caDir);
  openssl(
    [
      'req', '-x509', '-new', '-key', key, '-out', cert, '-days', '3650', '-subj', `/CN=${cn}`,
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ],
    caDir,
  );

  const issue = (opts: IssueOptions): Issued => {
    const stem = path.join(dir, opts.name ?? fileSafe(opts.cn));
    const leafKey = `${stem}-key.pem`;
    const leafCert = `${stem}.pem`;
    const csr = `${stem}.csr`;
    const ext = `${stem}.ext`;
    newKey(leafKey, dir);
    openssl(['req', '-new', '-key', leafKey, '-out', csr, '-subj', `/CN=${opts.cn}`], dir);
    writeFileSync(
      ext,
      [
        '[leaf]',
        'basicConstraints = critical,CA:FALSE',
        'keyUsage = critical,digitalSignature',
        `extendedKeyUsage = ${opts.usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
        ...(opts.sans !== undefined && opts.sans.length > 0 ? [`subjectAltName = ${opts.sans.join(',')}`] : []),
        '',
      ].join('\n'),
    );
    const notBefore = opts.notBefore ?? new Date(Date.now() - HOUR);
    const notAfter = opts.notAfter ?? new Date(Date.now() + 365 * DAY);
    openssl(
      [
        'ca', '-batch', '-notext', '-config', path.join(caDir, 'ca.cnf'), '-cert', cert, '-keyfile', key,
        '-in', csr, '-out', leafCert, '-extfile', ext, '-extensions', 'leaf',
        '-startdate', asn1Time(notBefore), '-enddate', asn1Time(notAfter),
      ],
      dir,
    );
    return { cert: leafCert, key: leafKey, certPem: readFileSync(leafCert, 'utf8'), keyPem: readFileSync(leafKey, 'utf8'), cn: opts.cn };
  };

  return { cert, key, certPem: readFileSync(cert, 'utf8'), keyPem: readFileSync(key, 'utf8'), cn, issue };
}

/** Everything the TLS tests need, made once per suite. */
export interface TestPki {
  readonly dir: string;
  /** The CA legate is configured to trust; it also signs the client certificates. */
  readonly ca: TestCa;
  /** A second CA that nobody trusts. */
  readonly otherCa: TestCa;
  /** SANs DNS:localhost and IP:127.0.0.1. */
  readonly server: Issued;
  /** Valid for a name the tests never connect to (DNS:other.example). */
  readonly serverWrongName: Issued;
  /** Expired yesterday. */
  readonly serverExpired: Issued;
  /** Valid from tomorrow. */
  readonly serverNotYetValid: Issued;
  /** Same names as `server`, signed by `otherCa`. */
  readonly serverOtherCa: Issued;
  /** Client certificates signed by `ca`. */
  readonly clientA: Issued;
  readonly clientB: Issued;
  /** A client certificate signed by `otherCa`, which the upstream does not trust. */
  readonly clientOtherCa: Issued;
  /** A client certificate that expires in three days (for the expiry warning). */
  readonly clientExpiringSoon: Issued;
}

/** Generates a full test PKI in a fresh temporary folder. */
export function createTestPki(dir = tempDir('legate-pki-')): TestPki {
  const ca = createCa(dir, 'Legate Test CA');
  const otherCa = createCa(dir, 'Unrelated Test CA');
  const serverSans = ['DNS:localhost', 'IP:127.0.0.1'];
  const now = Date.now();
  return {
    dir,
    ca,
    otherCa,
    server: ca.issue({ cn: 'localhost', sans: serverSans, usage: 'server', name: 'server' }),
    serverWrongName: ca.issue({ cn: 'other.example', sans: ['DNS:other.example'], usage: 'server', name: 'server-wrong-name' }),
    serverExpired: ca.issue({
      cn: 'localhost',
      sans: serverSans,
      usage: 'server',
      name: 'server-expired',
      notBefore: new Date(now - 30 * DAY),
      notAfter: new Date(now - DAY),
    }),
    serverNotYetValid: ca.issue({
      cn: 'localhost',
      sans: serverSans,
      usage: 'server',
      name: 'server-not-yet-valid',
      notBefore: new Date(now + DAY),
      notAfter: new Date(now + 30 * DAY),
    }),
    serverOtherCa: otherCa.issue({ cn: 'localhost', sans: serverSans, usage: 'server', name: 'server-other-ca' }),
    clientA: ca.issue({ cn: 'client-a', usage: 'client' }),
    clientB: ca.issue({ cn: 'client-b', usage: 'client' }),
    clientOtherCa: otherCa.issue({ cn: 'client-other-ca', usage: 'client' }),
    clientExpiringSoon: ca.issue({ cn: 'client-expiring', usage: 'client', notAfter: new Date(now + 3 * DAY) }),
  };
}

/**
 * How a certificate pair is replaced on disk:
 * - `rename`: written beside and renamed over (cert-manager, most tools);
 * - `in-place`: truncated and rewritten (a naive script, some agents);
 * - `kubernetes`: the files are symlinks through `..data`, which is swapped to
 *   a new timestamped folder, as the kubelet updates a mounted Secret.
 */
export type RotationMode = 'rename' | 'in-place' | 'kubernetes';

/** A client pair installed at fixed paths that legate's config names. */
export interface PairOnDisk {
  readonly cert: string;
  readonly key: string;
  /** Replaces the certificate, the key, or both with those of `to`. */
  rotate(to: Issued, which?: 'both' | 'cert' | 'key'): void;
}

let generation = 0;

/** Installs `issued` as `tls.crt` / `tls.key` in `dir`, laid out for `mode`. */
export function installPair(dir: string, issued: Issued, mode: RotationMode): PairOnDisk {
  const cert = path.join(dir, 'tls.crt');
  const key = path.join(dir, 'tls.key');
  const current = { certPem: issued.certPem, keyPem: issued.keyPem };
  const k8sSwap = (): void => {
    const folder = `..${Date.now()}_${++generation}`;
    mkdirSync(path.join(dir, folder));
    writeFileSync(path.join(dir, folder, 'tls.crt'), current.certPem);
    writeFileSync(path.join(dir, folder, 'tls.key'), current.keyPem);
    symlinkSync(folder, path.join(dir, '..data_tmp'));
    renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  };
  if (mode === 'kubernetes') {
    k8sSwap();
    symlinkSync('..data/tls.crt', cert);
    symlinkSync('..data/tls.key', key);
  } else {
    writeFileSync(cert, current.certPem);
    writeFileSync(key, current.keyPem);
  }
  const put = (file: string, text: string): void => {
    if (mode === 'in-place') {
      writeFileSync(file, text);
    } else {
      writeFileSync(`${file}.tmp`, text);
      renameSync(`${file}.tmp`, file);
    }
  };
  return {
    cert,
    key,
    rotate(to, which = 'both') {
      if (which !== 'key') current.certPem = to.certPem;
      if (which !== 'cert') current.keyPem = to.keyPem;
      if (mode === 'kubernetes') {
        const old = readlinkTarget(path.join(dir, '..data'));
        k8sSwap();
        if (old !== undefined) rmSync(path.join(dir, old), { recursive: true, force: true });
        return;
      }
      if (which !== 'key') put(cert, current.certPem);
      if (which !== 'cert') put(key, current.keyPem);
    },
  };
}

function readlinkTarget(link: string): string | undefined {
  try {
    return readlinkSync(link);
  } catch {
    return undefined;
  }
}
