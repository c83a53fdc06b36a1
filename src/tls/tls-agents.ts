/**
 * https connection pools per TLS identity (CA, client certificate, SNI,
 * minimum version), built from the route's or endpoint's `tls:` settings, and
 * certificate rotation without restart: when the files of an identity change
 * on disk and the new set is consistent, a new pool is built and swapped in;
 * the old one is retired gracefully by the AgentPool. An inconsistent set (a
 * rotation caught half-way) is never used.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { EndpointSettings, TlsSettings } from '../config/model.js';
import type { Logger } from '../observability/logger.js';
import { identityOf, type AgentFactory, type AgentPool } from '../runtime/agents.js';
import { FolderWatcher } from './file-watcher.js';
import { loadTlsMaterial, materialFiles, type CertificateInfo, type MaterialResult, type TlsMaterial } from './material.js';
import { TlsAgent } from './tls-agent.js';

export type { CertificateInfo } from './material.js';

/** A certificate this close to its notAfter is logged as a warning. */
export const EXPIRY_WARNING_SECONDS = 7 * 24 * 3600;

/** Tuning of TlsAgents; the defaults suit production. */
export interface TlsAgentsOptions {
  /** Backup poll of the files; fs.watch normally sees changes first. Default 5 s. */
  readonly pollMs?: number;
  /** Quiet time after a file event before the files are re-read. Default 150 ms. */
  readonly debounceMs?: number;
  /** Clock in milliseconds, for expiry tests. */
  readonly now?: () => number;
}

interface Identity {
  readonly id: string;
  readonly settings: TlsSettings;
  /** `host:port`, for logs. */
  readonly upstream: string;
  readonly host: string;
  /** The material the current agent uses; undefined when the files were never usable. */
  material: TlsMaterial | undefined;
  /** Digest of the last state seen (usable or not), so one state is acted on once. */
  seenDigest: string;
}

const DEFAULT_POLL_MS = 5_000;
const DEFAULT_DEBOUNCE_MS = 150;

/**
 * The https agent factory of the AgentPool plus the certificate watcher:
 * one TlsAgent per TLS identity, replaced in the pool when its files rotate.
 */
export class TlsAgents {
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #identities = new Map<string, Identity>();
  readonly #watcher: FolderWatcher;
  /** Certificates already warned about (by fingerprint and file), so each is warned once. */
  readonly #expiryWarned = new Set<string>();
  #pool: AgentPool | undefined;
  #closed = false;

  constructor(logger: Logger, options: TlsAgentsOptions = {}) {
    this.#logger = logger;
    this.#now = options.now ?? Date.now;
    const debounceMs = options.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    this.#watcher = new FolderWatcher(() => this.check(), {
      debounceMs,
      maxWaitMs: Math.max(1_000, debounceMs * 4),
      pollMs: options.pollMs ?? DEFAULT_POLL_MS,
      onWatchError: (folder, err) =>
        this.#logger.debug({ folder, err: (err as Error).message }, 'cannot watch certificate folder; polling it instead'),
    });
  }

  /** Builds the https pool of one endpoint identity. Never throws: unusable files fail each request instead. */
  readonly factory: AgentFactory = (endpoint: EndpointSettings) => {
    const settings = endpoint.tls ?? {};
    const id = identityOf(endpoint);
    const upstream = endpoint.url.host;
    const host = endpoint.url.hostname.replace(/^\[|\]$/g, '');
    const result = loadTlsMaterial(settings);
    const identity: Identity = { id, settings, upstream, host, material: undefined, seenDigest: result.ok ? result.material.digest : result.digest };
    if (!this.#closed && materialFiles(settings).length > 0) {
      this.#identities.set(id, identity);
      this.#watcher.setFolders(this.#folders());
    }
    if (!result.ok) {
      // Config load checked these files; they changed or vanished since. Every request says why until they are fixed.
      this.#logger.error({ upstream, files: result.files, problem: result.problem }, 'TLS files are not usable; requests to this upstream fail until they are fixed');
      return new TlsAgent({ settings, host, material: { problem: result.problem } });
    }
    identity.material = result.material;
    this.#logger.debug(
      { upstream, certificates: result.material.certificates.map((c) => ({ file: c.file, subject: c.subject, role: c.role })) },
      'TLS identity loaded',
    );
    this.#warnExpiring(result.material.certificates);
    return new TlsAgent({ settings, host, material: result.material });
  };

  /** Gives the manager the pool whose agents it replaces on rotation. */
  attach(pool: AgentPool): void {
    this.#pool = pool;
  }

  /**
   * Builds the pools of these endpoints now instead of on their first
   * request, so certificates are read, reported by `certificates()` and
   * warned about from the start. Meant for the app after each config swap.
   */
  preload(endpoints: Iterable<EndpointSettings>): void {
    const pool = this.#pool;
    if (pool === undefined || this.#closed) return;
    for (const endpoint of endpoints) if (endpoint.url.protocol === 'https:') pool.get(endpoint);
  }

  /** Forgets every identity not in `inUse` (agent identities, as `identityOf` spells them). */
  retain(inUse: ReadonlySet<string>): void {
    let changed = false;
    for (const id of this.#identities.keys()) {
      if (!inUse.has(id)) {
        this.#identities.delete(id);
        changed = true;
      }
    }
    if (changed) this.#watcher.setFolders(this.#folders());
  }

  /** Every certificate loaded (CA bundles and client certificates), for the expiry metric. */
  certificates(): CertificateInfo[] {
    const out = new Map<string, CertificateInfo>();
    for (const identity of this.#identities.values()) {
      for (const c of identity.material?.certificates ?? []) out.set(`${c.file}|${c.fingerprint256}`, c);
    }
    return [...out.values()];
  }

  /** Folders watched for changes (for tests and diagnostics). */
  get watchedFolders(): string[] {
    return this.#watcher.watching;
  }

  /** True while any watcher or timer is open. */
  get active(): boolean {
    return this.#watcher.active;
  }

  /**
   * Re-reads the files of every identity and swaps in a new pool for each
   * whose files changed into a usable set. Runs on file events and on the
   * poll; callable directly (SIGHUP, tests).
   */
  check(): void {
    const pool = this.#pool;
    if (this.#closed || pool === undefined) return;
    const cache = new Map<string, Buffer | Error>();
    // A file shared by several identities is read once per pass, so they all see the same bytes.
    const read = (file: string): Buffer => {
      let v = cache.get(file);
      if (v === undefined) {
        try {
          v = readFileSync(file);
        } catch (err) {
          v = err as Error;
        }
        cache.set(file, v);
      }
      if (v instanceof Error) throw v;
      return v;
    };
    const logged = new Set<string>();
    for (const identity of this.#identities.values()) {
      const result = loadTlsMaterial(identity.settings, read);
      const digest = result.ok ? result.material.digest : result.digest;
      if (digest === identity.seenDigest) continue;
      identity.seenDigest = digest;
      this.#apply(pool, identity, result, logged);
    }
    // A long-running process must still warn when a certificate that was fine at load nears its end.
    this.#warnExpiring(this.certificates());
  }

  #apply(pool: AgentPool, identity: Identity, result: MaterialResult, logged: Set<string>): void {
    if (!result.ok) {
      const files = result.files;
      if (identity.material === undefined) {
        this.#logger.error({ upstream: identity.upstream, files, problem: result.problem }, 'TLS files are still not usable');
      } else {
        this.#logger.warn(
          { upstream: identity.upstream, files, problem: result.problem },
          'changed TLS files not applied (is a rotation half-written?); the previous certificate keeps serving',
        );
      }
      return;
    }
    const next = result.material;
    const previous = identity.material;
    if (previous !== undefined && previous.digest === next.digest) return;
    pool.replace(identity.id, new TlsAgent({ settings: identity.settings, host: identity.host, material: next }));
    identity.material = next;
    for (const [file, fileDigest] of next.fileDigests) {
      if (previous?.fileDigests.get(file) === fileDigest || logged.has(`${file}|${fileDigest}`)) continue;
      logged.add(`${file}|${fileDigest}`);
      const inFile = next.certificates.filter((c) => c.file === file);
      const first = inFile[0];
      if (first === undefined) {
        // The key file: its path is all that is ever logged.
        this.#logger.info({ file, upstream: identity.upstream }, 'private key reloaded');
        continue;
      }
      this.#logger.info(
        {
          file,
          upstream: identity.upstream,
          subject: first.subject,
          notAfter: new Date(first.notAfter * 1000).toISOString(),
          serialNumber: first.serialNumber,
          ...(inFile.length > 1 ? { certificates: inFile.length } : {}),
        },
        'certificate reloaded',
      );
    }
    this.#warnExpiring(next.certificates);
  }

  #warnExpiring(certs: readonly CertificateInfo[]): void {
    const nowSeconds = this.#now() / 1000;
    for (const c of certs) {
      const left = c.notAfter - nowSeconds;
      if (left > EXPIRY_WARNING_SECONDS) continue;
      const key = `${c.file}|${c.fingerprint256}|${left <= 0 ? 'expired' : 'soon'}`;
      if (this.#expiryWarned.has(key)) continue;
      this.#expiryWarned.add(key);
      const fields = {
        file: c.file,
        subject: c.subject,
        role: c.role,
        notAfter: new Date(c.notAfter * 1000).toISOString(),
        daysLeft: Math.round((left / 86_400) * 10) / 10,
      };
      this.#logger.warn(fields, left <= 0 ? 'certificate has expired' : 'certificate expires within 7 days');
    }
  }

  #folders(): Set<string> {
    const folders = new Set<string>();
    for (const identity of this.#identities.values()) for (const f of materialFiles(identity.settings)) folders.add(path.dirname(f));
    return folders;
  }

  /** Stops watching; timers and watchers are closed, nothing is replaced afterwards. */
  close(): void {
    this.#closed = true;
    this.#watcher.close();
    this.#identities.clear();
    this.#pool = undefined;
  }
}
