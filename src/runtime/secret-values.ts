/**
 * Header values that hold credentials: templates with `${env:NAME}` and
 * `${file:PATH}` (SPEC §12). Environment variables are read once, when the
 * config loads; files are read then and again whenever they change, so a
 * token rotated by a Vault agent or a Kubernetes Secret is used from the next
 * request on, without a restart.
 *
 * Values never leave this module except as the rendered header value: log
 * lines and messages name the variable or the file, never what it holds.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import pino from 'pino';
import type { Logger } from '../observability/logger.js';
import { FolderWatcher } from '../tls/file-watcher.js';

/** One piece of a template. */
export type TemplatePart =
  | { readonly kind: 'text'; readonly text: string }
  | { readonly kind: 'env'; readonly name: string }
  | { readonly kind: 'file'; readonly path: string };

const REFERENCE = /\$\{(env|file):([^}]*)\}/g;

/** Splits a template into text and references; anything that is not `${env:..}` or `${file:..}` is text. */
export function parseTemplate(template: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let at = 0;
  for (const m of template.matchAll(REFERENCE)) {
    const index = m.index;
    if (index > at) parts.push({ kind: 'text', text: template.slice(at, index) });
    const ref = m[2] ?? '';
    parts.push(m[1] === 'env' ? { kind: 'env', name: ref } : { kind: 'file', path: ref });
    at = index + m[0].length;
  }
  if (at < template.length) parts.push({ kind: 'text', text: template.slice(at) });
  return parts;
}

/** What HTTP allows in a field value (RFC 9110 §5.5): no CR, LF, NUL or other controls but tab. */
const VALID_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * A secret file's content as a header value: surrounding whitespace trimmed
 * (token files usually end with a newline), never a line break inside.
 */
function fileValue(path: string): { value: string } | { problem: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return { problem: `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
  }
  const value = text.trim();
  if (!VALID_VALUE.test(value)) return { problem: `${path} holds characters a header value cannot carry (a line break or control character)` };
  return { value };
}

function envValue(name: string, env: NodeJS.ProcessEnv): { value: string } | { problem: string } {
  const value = env[name];
  if (value === undefined) return { problem: `environment variable ${name} is not set` };
  if (!VALID_VALUE.test(value)) return { problem: `environment variable ${name} holds characters a header value cannot carry` };
  return { value };
}

/**
 * Why a template cannot be rendered now (an unset variable, an unreadable
 * file, an empty reference), or undefined when it can. For the config
 * loader, which reports it as an error at the key; the message names the
 * variable or file, never a value.
 */
export function templateProblem(template: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const part of parseTemplate(template)) {
    if (part.kind === 'env') {
      if (part.name === '') return 'has an empty ${env:} reference';
      const r = envValue(part.name, env);
      if ('problem' in r) return r.problem;
    } else if (part.kind === 'file') {
      if (part.path === '') return 'has an empty ${file:} reference';
      const r = fileValue(part.path);
      if ('problem' in r) return r.problem;
    } else if (!VALID_VALUE.test(part.text)) {
      return 'holds characters a header value cannot carry';
    }
  }
  return undefined;
}

/** A compiled template: its current value, or why it has none. */
export interface RenderedValue {
  /** The value to send, or undefined while it cannot be rendered. */
  value(): string | undefined;
  /** Why `value()` is undefined (names a variable or file, never a value). */
  problem(): string | undefined;
}

interface WatchedFile {
  /** sha256 of the last content read, to tell a real change from a spurious event. */
  digest: string | undefined;
  value: string | undefined;
  problem: string | undefined;
  /** Templates to re-render when this file changes. */
  readonly dependents: Set<Template>;
}

class Template implements RenderedValue {
  #value: string | undefined;
  #problem: string | undefined;
  constructor(
    readonly parts: readonly TemplatePart[],
    private readonly lookup: (part: TemplatePart) => { value: string } | { problem: string },
  ) {
    this.render();
  }

  render(): void {
    let out = '';
    for (const part of this.parts) {
      if (part.kind === 'text') {
        out += part.text;
        continue;
      }
      const r = this.lookup(part);
      if ('problem' in r) {
        // Keep serving the last good value: a file briefly missing mid-rotation must not break requests.
        this.#problem = r.problem;
        return;
      }
      out += r.value;
    }
    this.#value = out;
    this.#problem = undefined;
  }

  value(): string | undefined {
    return this.#value;
  }

  problem(): string | undefined {
    return this.#value === undefined ? this.#problem : undefined;
  }
}

export interface SecretValuesOptions {
  /** Where reloads and unreadable files are reported; silent when absent. */
  readonly logger?: Logger;
  /** Fields added to every log line (e.g. the route). */
  readonly context?: Readonly<Record<string, unknown>>;
  readonly env?: NodeJS.ProcessEnv;
  /** Quiet time after a change in a watched folder before files are re-read. */
  readonly debounceMs?: number;
  /** Backup poll for filesystems where watching is unreliable; 0 = none. */
  readonly pollMs?: number;
}

const DEFAULT_DEBOUNCE_MS = 50;
const DEFAULT_POLL_MS = 5_000;

/**
 * The templates of one route, with the files they read. The folders of the
 * files are watched (a watch on the file itself goes blind when it is
 * replaced by rename or a symlink swap) and polled slowly; a file is only
 * taken as changed when its content digest changes. `dispose()` closes every
 * watcher and timer.
 */
export class SecretValues {
  readonly #files = new Map<string, WatchedFile>();
  readonly #env: NodeJS.ProcessEnv;
  readonly #logger: Logger;
  readonly #context: Readonly<Record<string, unknown>>;
  readonly #watcher: FolderWatcher;

  constructor(opts: SecretValuesOptions = {}) {
    this.#env = opts.env ?? process.env;
    this.#logger = opts.logger ?? pino({ enabled: false });
    this.#context = opts.context ?? {};
    this.#watcher = new FolderWatcher(() => this.check(), {
      debounceMs: opts.debounceMs ?? DEFAULT_DEBOUNCE_MS,
      maxWaitMs: 1_000,
      pollMs: opts.pollMs ?? DEFAULT_POLL_MS,
      onWatchError: (folder, err) =>
        this.#logger.debug({ ...this.#context, folder, err: (err as Error).message }, 'cannot watch the folder of a header value file; polling it instead'),
    });
  }

  /** Compiles a template: variables are read now, files now and on every change. */
  compile(template: string): RenderedValue {
    const parts = parseTemplate(template);
    const t = new Template(parts, (part) => {
      if (part.kind === 'env') return envValue(part.name, this.#env);
      if (part.kind === 'file') {
        const f = this.#files.get(part.path);
        if (f?.value !== undefined) return { value: f.value };
        return { problem: f?.problem ?? `${part.path} was not read` };
      }
      return { value: part.text };
    });
    let newFile = false;
    for (const part of parts) {
      if (part.kind !== 'file') continue;
      let f = this.#files.get(part.path);
      if (f === undefined) {
        f = { digest: undefined, value: undefined, problem: undefined, dependents: new Set() };
        this.#files.set(part.path, f);
        this.#read(part.path, f);
        newFile = true;
      }
      f.dependents.add(t);
    }
    t.render();
    if (newFile) this.#watcher.setFolders(new Set([...this.#files.keys()].map((p) => dirname(p))));
    const problem = t.problem();
    if (problem !== undefined) {
      this.#logger.error({ ...this.#context, problem }, 'a header value cannot be resolved; requests on this route fail until it can');
    }
    return t;
  }

  /** Files read by the templates (for diagnostics and tests). */
  get files(): string[] {
    return [...this.#files.keys()];
  }

  /** True while a watcher or poll timer is open. */
  get watching(): boolean {
    return this.#watcher.active;
  }

  /** Re-reads every file; re-renders the templates of those whose content changed. */
  check(): void {
    for (const [path, f] of this.#files) {
      const before = f.digest;
      const hadValue = f.value !== undefined;
      this.#read(path, f);
      if (f.digest !== before && f.value !== undefined) {
        for (const t of f.dependents) t.render();
        if (hadValue) this.#logger.info({ ...this.#context, file: path }, 'header value file changed; the new value is used from the next request');
        else this.#logger.info({ ...this.#context, file: path }, 'header value file is readable again; requests on this route use it from now on');
      }
    }
  }

  #read(path: string, f: WatchedFile): void {
    const r = fileValue(path);
    if ('problem' in r) {
      if (f.problem !== r.problem && f.value !== undefined) {
        this.#logger.warn({ ...this.#context, file: path, problem: r.problem }, 'header value file cannot be read; the last value read keeps being used');
      }
      f.problem = r.problem;
      return;
    }
    f.problem = undefined;
    const digest = createHash('sha256').update(r.value).digest('hex');
    if (digest === f.digest) return;
    f.digest = digest;
    f.value = r.value;
  }

  /** Closes the watcher and the poll; nothing is re-read afterwards. */
  dispose(): void {
    this.#watcher.close();
  }
}
