#!/usr/bin/env node
/**
 * legate's command line: run the proxy, validate a routes.yaml, or explain
 * which route a request would take.
 */
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { LegateApp } from './app.js';
import { explain } from './explain.js';
import { formatIssue, loadConfigFile } from './config/load.js';
import { watchConfigFile, type ConfigWatcher } from './config/watch.js';
import { closeLogger, createLogger } from './observability/logger.js';
import { startMemoryReducerNudge } from './runtime/memory-reducer.js';

const USAGE = `legate — an outbound HTTP proxy sidecar (ambassador) for legacy apps

Usage:
  legate [--config FILE]                  run the proxy (default FILE: ./routes.yaml)
  legate validate [FILE]                  check FILE; exit 0 when valid, 1 with every error
  legate explain [--config FILE] METHOD URL [-H 'name: value']...
                                          show the route a request would take and its policy
  legate --help | --version

URL may be a path (/payments/charge), a URL on the proxy itself
(http://localhost:15001/payments/charge) or any other absolute URL, which is
read as an HTTP_PROXY-style request for that host.

Signals: SIGHUP reloads the config, re-reads certificates and header value files and reopens the
access log file; SIGUSR1 reopens the access log file (log rotation); SIGTERM/SIGINT drain and stop
(twice: at once).
Docs: README.md`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function validate(file: string): Promise<number> {
  // Checked as the start would find it, which opens the access log (as `nginx -t` opens its logs).
  const result = await loadConfigFile(file, { probeAccessLog: true });
  if (!result.ok) {
    for (const issue of result.issues) process.stderr.write(formatIssue(issue) + '\n');
    process.stderr.write(`${file}: ${result.issues.length} error${result.issues.length === 1 ? '' : 's'}\n`);
    return 1;
  }
  for (const w of result.warnings) process.stderr.write(`${file}: warning: ${w}\n`);
  const n = result.config.routes.length;
  process.stdout.write(`${file}: valid, ${n} route${n === 1 ? '' : 's'}\n`);
  return 0;
}

async function run(file: string): Promise<number> {
  const loaded = await loadConfigFile(file);
  if (!loaded.ok) {
    for (const issue of loaded.issues) process.stderr.write(formatIssue(issue) + '\n');
    process.stderr.write(`legate: not started: ${file} has ${loaded.issues.length} error(s)\n`);
    return 1;
  }
  const logger = createLogger({ level: process.env.LOG_LEVEL ?? loaded.config.logLevel });
  for (const w of loaded.warnings) logger.warn({ file }, w);
  let app: LegateApp;
  try {
    app = new LegateApp(loaded.config, { logger });
  } catch (e) {
    // What the config names but the machine refuses (an access log file that cannot be opened).
    logger.fatal({ err: (e as Error).message }, 'legate could not start');
    await closeLogger(logger);
    return 1;
  }
  const absolute = path.resolve(file);

  // Handlers go in before start: a signal that arrives while listeners bind must not take Node's
  // default action (SIGHUP would kill the process).
  let watcher: ConfigWatcher | undefined = undefined;
  let started = false;
  let stopping = false;
  let exitWith: (code: number) => void = () => undefined;
  const exited = new Promise<number>((resolve) => (exitWith = resolve));
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping || !started) {
      // A second signal, or one before anything could be in flight: exit now.
      logger.warn({ signal }, stopping ? 'second signal: exiting now, without waiting for requests in flight' : 'signal during start: exiting');
      const exit = (): never => process.exit(128 + (constants.signals[signal] ?? 0));
      // Lines written out in order if stdout takes them promptly; a stuck stdout gets 250 ms, no more.
      setTimeout(exit, 250);
      void closeLogger(logger).then(exit);
      return;
    }
    stopping = true;
    logger.info({ signal }, 'signal received: draining (send it again to exit at once)');
    watcher?.close();
    app.stop().then(
      () => exitWith(0),
      (e: unknown) => {
        logger.error({ err: (e as Error).message }, 'error while stopping');
        exitWith(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Log rotation: the access log file opened again by name. SIGUSR1 would otherwise start Node's
  // inspector; `node --inspect` still does that.
  const reopenLogs = (signal: NodeJS.Signals): void => {
    try {
      app.reopenLogs();
    } catch (e) {
      logger.error({ err: (e as Error).message, signal }, 'reopening the access log failed; lines go on to the file as it was');
    }
  };
  process.on('SIGUSR1', () => {
    if (started && !stopping) reopenLogs('SIGUSR1');
  });
  process.on('SIGHUP', () => {
    if (!started) return; // The file is being loaded as it is now.
    logger.info({ file }, 'SIGHUP: reloading config');
    try {
      app.refreshFiles();
    } catch (e) {
      // The watchers run the same checks; a failure here must not take the proxy down with the signal.
      logger.error({ err: (e as Error).message }, 'SIGHUP: re-reading certificates and header value files failed');
    }
    reopenLogs('SIGHUP');
    app.reloadText(readFileSync(absolute, 'utf8'), file).catch((e: unknown) => {
      logger.error({ err: (e as Error).message, file }, 'config reload rejected; the previous config keeps serving');
    });
  });

  try {
    await app.start();
  } catch (e) {
    logger.fatal({ err: (e as Error).message }, 'legate could not start');
    await closeLogger(logger);
    return 1;
  }
  started = true;
  startMemoryReducerNudge();
  watcher = watchConfigFile(absolute, readFileSync(absolute, 'utf8'), {
    onChange: (text) => void app.reloadText(text, file),
    onError: (e) => logger.warn({ err: e.message, file }, 'config watch error'),
  });

  const code = await exited;
  await closeLogger(logger);
  // Exit now rather than when the event loop empties: a stray timer in any layer must not hold a stopping pod.
  process.exit(code);
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      header: { type: 'string', short: 'H', multiple: true },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'v' },
    },
  });
  if (values.help === true) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (values.version === true) {
    process.stdout.write(`legate ${version()}\n`);
    return 0;
  }
  const [command, ...rest] = positionals;
  const configFile = values.config ?? process.env.LEGATE_CONFIG ?? 'routes.yaml';
  switch (command) {
    case undefined:
      return run(configFile);
    case 'run':
      return run(rest[0] ?? configFile);
    case 'validate':
      return validate(rest[0] ?? configFile);
    case 'explain': {
      const [method, url] = rest;
      if (method === undefined || url === undefined) {
        process.stderr.write('legate explain: needs METHOD and URL, e.g. legate explain GET /payments/charge\n');
        return 2;
      }
      return explain(configFile, method, url, values.header ?? []);
    }
    default:
      process.stderr.write(`legate: unknown command ${JSON.stringify(command)}\n\n${USAGE}\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`legate: ${(e as Error).message}\n`);
    process.exitCode = 2;
  },
);
