/**
 * Runs legate for tests: the real CLI as a subprocess (`startCli`), or the
 * app in-process (`startApp`) where a test needs to look inside.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { LegateApp } from '../../src/app.js';
import { readJsonLines } from '../../src/demo/json-lines.js';
import { formatIssue, loadConfigText } from '../../src/config/load.js';
import { tempDir } from './temp.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(ROOT, 'dist/cli.js');

export { tempDir };

/** Polls `check` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function waitFor<T>(check: () => T | undefined | Promise<T | undefined>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface CliProcess {
  readonly child: ChildProcess;
  /** Every stdout line parsed as JSON (non-JSON lines kept as {raw}). */
  readonly lines: Array<Record<string, unknown>>;
  readonly stderr: () => string;
  readonly stdout: () => string;
  readonly proxyPort: number;
  readonly adminPort: number;
  readonly configFile: string;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
  waitForLine(pred: (l: Record<string, unknown>) => boolean, what: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Writes `yaml` to a temp routes.yaml (unless `configFile` is given) and runs
 * `node dist/cli.js --config FILE`. Use `listen: 127.0.0.1:0` and
 * `admin: 127.0.0.1:0`: the bound ports are read from the start line.
 */
export async function startCli(
  yaml: string,
  opts: {
    configFile?: string;
    env?: Record<string, string>;
    args?: string[];
    /** A command that runs node, e.g. `prlimit --fsize=N --`. */
    wrap?: string[];
    /** Node's own flags, before the script (e.g. `--trace-gc`). */
    nodeArgs?: string[];
  } = {},
): Promise<CliProcess> {
  const configFile = opts.configFile ?? path.join(tempDir(), 'routes.yaml');
  if (opts.configFile === undefined) writeFileSync(configFile, yaml);
  const command = [...(opts.wrap ?? []), process.execPath, ...(opts.nodeArgs ?? []), CLI, '--config', configFile, ...(opts.args ?? [])];
  const child = spawn(command[0] as string, command.slice(1), {
    env: { ...process.env, LOG_LEVEL: 'debug', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, unknown>> = [];
  let out = '';
  let err = '';
  if (child.stdout !== null) {
    readJsonLines(child.stdout, (line, raw) => {
      out += `${raw}\n`;
      lines.push(line ?? { raw });
    });
  }
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const waitForLine = (pred: (l: Record<string, unknown>) => boolean, what: string, timeoutMs = 10_000) =>
    waitFor(() => {
      if (child.exitCode !== null && !lines.some(pred)) throw new Error(`legate exited (${child.exitCode}) before ${what}: ${err}${out}`);
      return lines.find(pred);
    }, what, timeoutMs);
  let started: Record<string, unknown>;
  try {
    started = await waitForLine((l) => l.msg === 'legate started', 'legate started');
  } catch (e) {
    // The caller never gets a handle to stop it: a process that did not start (or not in time) goes now.
    child.kill('SIGKILL');
    throw e;
  }
  const port = (addr: unknown) => Number(String(addr).split(':').pop());
  return {
    child,
    lines,
    stderr: () => err,
    stdout: () => out,
    proxyPort: port(started.listen),
    adminPort: port(started.admin),
    configFile,
    exited,
    waitForLine,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Collects log lines of an in-process app. */
export class LogSink extends Writable {
  readonly lines: Array<Record<string, unknown>> = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) if (line !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>);
    cb();
  }
}

export interface InProcess {
  readonly app: LegateApp;
  readonly logs: LogSink;
  readonly proxyPort: number;
  readonly adminPort: number;
  stop(): Promise<void>;
}

/** Starts legate in this process from YAML text (ports 0 are fine). */
export async function startApp(yaml: string, file = path.join(tempDir(), 'routes.yaml')): Promise<InProcess> {
  writeFileSync(file, yaml);
  const loaded = loadConfigText(yaml, file);
  if (!loaded.ok) throw new Error(loaded.issues.map(formatIssue).join('\n'));
  const logs = new LogSink();
  const app = new LegateApp(loaded.config, { logger: pino({ level: 'debug' }, logs) });
  await app.start();
  const port = (a: string | undefined) => Number(String(a).split(':').pop());
  return {
    app,
    logs,
    proxyPort: port(app.address('proxy')),
    adminPort: port(app.address('admin')),
    stop: () => app.stop(1_000),
  };
}
