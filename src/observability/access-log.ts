/**
 * The access line: one pino JSON line per request (SPEC §9), with the tries
 * that made it. Built from what the request already recorded, once, after
 * it ended: nothing here runs while bytes stream. Headers are never read
 * into a line, so credentials cannot reach it.
 */
import { closeSync, fstatSync, mkdirSync, openSync } from 'node:fs';
import { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pino from 'pino';
import type { RequestContext } from '../proxy/context.js';
import type { TryRecord } from '../proxy/types.js';
import { missingDirectories } from '../runtime/files.js';
import type { EarlyOutcome } from '../server/proxy-listener.js';
import { accessJson, frameOf } from './access-json.js';
import { countLines, endDestination, loggerOptions, streamOf, type Destination, type Logger } from './logger.js';

/**
 * The fields of an access line, beside pino's `level`, `time` and `msg`, in
 * the order they are written (`accessLine()` builds them in this order).
 */
export interface AccessLine {
  readonly requestId: string;
  readonly method: string;
  /** Normalised path without the query string. */
  readonly path: string;
  /** Route name; null when no route took the request. */
  readonly route: string | null;
  /**
   * `host:port` of the last try's endpoint; without a try, the endpoint that
   * was chosen (a breaker open for it answered); null when none was.
   */
  readonly upstream: string | null;
  readonly status: number;
  /** Tries made. */
  readonly attempts: number;
  readonly durationMs: number;
  /** From the last try's start to its response head; null without a response. */
  readonly upstreamMs: number | null;
  /** Request body bytes received from the app; null when not known exactly. */
  readonly bytesIn: number | null;
  /** Response body bytes sent to the app; null when not known exactly. */
  readonly bytesOut: number | null;
  /** legate's error code when the request failed. */
  readonly error: string | null;
  readonly optOut: readonly string[];
  readonly optOutDenied: readonly string[];
  readonly tries: readonly TryRecord[];
}

/** The `msg` of every access line, so they can be told from lifecycle lines. */
export const ACCESS_MESSAGE = 'access';

const NONE: readonly never[] = Object.freeze([]);

/** Where the exact body byte counts live on the counting request and response classes. */
export const BODY_BYTES = Symbol('legate.bodyBytes');

interface Counted {
  [BODY_BYTES]: number;
}

function chunkBytes(chunk: unknown, encoding: unknown): number {
  if (typeof chunk === 'string') return Buffer.byteLength(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  if (chunk instanceof Uint8Array) return chunk.byteLength;
  return 0;
}

/**
 * An `IncomingMessage` that counts the body bytes the HTTP parser hands it.
 * Passed to `http.createServer({ IncomingMessage })` it makes `bytesIn`
 * exact for every body, chunked or cut short, for one addition per chunk and
 * without a `data` listener (which would change how the body flows).
 */
export class CountingIncomingMessage extends IncomingMessage implements Counted {
  [BODY_BYTES] = 0;

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk !== null) this[BODY_BYTES] += chunkBytes(chunk, encoding);
    return super.push(chunk, encoding);
  }
}

/**
 * A `ServerResponse` that counts the body bytes written to it, for
 * `http.createServer({ ServerResponse })`: `bytesOut` is then exact for
 * chunked and cut-short responses too.
 */
export class CountingServerResponse<Request extends IncomingMessage = IncomingMessage> extends ServerResponse<Request> implements Counted {
  [BODY_BYTES] = 0;

  override write(chunk: unknown, encoding?: unknown, callback?: unknown): boolean {
    if (!this.destroyed) this[BODY_BYTES] += chunkBytes(chunk, encoding);
    // Node sorts out (chunk, callback) versus (chunk, encoding, callback) itself.
    return super.write(chunk, encoding as BufferEncoding, callback as (error: Error | null | undefined) => void);
  }

  override end(chunk?: unknown, encoding?: unknown, callback?: unknown): this {
    if (typeof chunk !== 'function' && !this.destroyed) this[BODY_BYTES] += chunkBytes(chunk, encoding);
    return super.end(chunk, encoding as BufferEncoding, callback as () => void);
  }
}

function contentLength(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** Body bytes received from the app: counted when the listener counts, else what a complete request declared. */
export function bytesIn(ctx: RequestContext): number | null {
  const raw = ctx.raw;
  const counted = (raw as Partial<Counted>)[BODY_BYTES];
  if (counted !== undefined) return counted;
  if (!raw.complete) return null;
  // A complete request carried exactly its Content-Length, or what a retry buffer holds, or nothing.
  const known = contentLength(raw.headers['content-length']) ?? ctx.body.length;
  if (known !== undefined) return known;
  return raw.headers['transfer-encoding'] === undefined ? 0 : null;
}

/**
 * Body bytes sent to the app, when the listener counts them; null otherwise
 * (a response written with `writeHead(status, headers)` keeps no header
 * Node would let us read back, so there is no exact fallback).
 */
export function bytesOut(ctx: RequestContext): number | null {
  return responseBodyBytes(ctx.method, ctx.appResponse);
}

/** The body bytes a response to the app carried, as its counting class saw them; null when it cannot say. */
export function responseBodyBytes(method: string, res: ServerResponse): number | null {
  // Node sends no body for these whatever is written.
  if (method === 'HEAD' || res.statusCode === 204 || res.statusCode === 304) return res.headersSent ? 0 : null;
  return (res as Partial<Counted>)[BODY_BYTES] ?? null;
}

/** Tells a request answered before routing from a routed one. */
export function isEarly(outcome: RequestContext | EarlyOutcome): outcome is EarlyOutcome {
  return (outcome as EarlyOutcome).early === true;
}

function round3(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

/** The access line of a finished request; `now` on the `performance.now()` clock. */
export function accessLine(outcome: RequestContext | EarlyOutcome, now: number): AccessLine {
  if (isEarly(outcome)) {
    return {
      requestId: outcome.id,
      method: outcome.method,
      path: outcome.path,
      route: null,
      upstream: null,
      status: outcome.status,
      attempts: 0,
      durationMs: round3(now - outcome.startedAt),
      upstreamMs: null,
      // The app's body, if any, was never read.
      bytesIn: null,
      bytesOut: outcome.bytesOut,
      error: outcome.errorCode,
      optOut: NONE,
      optOutDenied: NONE,
      tries: NONE,
    };
  }
  const ctx = outcome;
  const tries = ctx.tries;
  const last = tries.length > 0 ? tries[tries.length - 1] : undefined;
  const optOut = ctx.policy.optOut;
  return {
    requestId: ctx.id,
    method: ctx.method,
    path: ctx.path,
    route: ctx.route.name,
    upstream: last?.endpoint ?? ctx.endpoint?.key ?? null,
    status: ctx.status,
    attempts: tries.length,
    durationMs: round3(now - ctx.startedAt),
    upstreamMs: ctx.upstreamMs === undefined ? null : round3(ctx.upstreamMs),
    bytesIn: bytesIn(ctx),
    bytesOut: bytesOut(ctx),
    error: ctx.errorCode ?? null,
    optOut: optOut.size === 0 ? NONE : [...optOut],
    optOutDenied: ctx.policy.optOutDenied,
    tries,
  };
}

/** Writes access lines; owns its destination when it is not the main logger's. */
export interface AccessLog {
  write(line: AccessLine): void;
  /**
   * A regular file: writes out the lines gathered so far, then opens the
   * file by its name again, so lines go to a new file once logrotate (or an
   * operator) has moved the old one away (nginx's `reopen`, Envoy's
   * `reopen_logs`). If it cannot be opened, writing goes on to the old one
   * and the failure is logged. Nothing for stdout, stderr, pipes and devices.
   */
  reopen(): void;
  /** Flushes, and closes a destination of its own. */
  close(): Promise<void>;
}

/**
 * Access lines go to the main logger's stream (`stdout`, the default), to
 * `stderr`, or to a file (appended, created with its directory). They are
 * written at `info` whatever the diagnostic level, as Envoy's and nginx's
 * access logs are independent of their error log level; only `silent`
 * silences them. Their logger skips redaction: no access field holds a header.
 *
 * A file that cannot be opened throws here, naming the file and the cause,
 * so legate does not start (as nginx and Envoy refuse to start without
 * their access log) rather than run losing every line.
 */
export function createAccessLog(logger: Logger, destination = 'stdout', opts: AccessFileOptions = {}): AccessLog {
  const silent = opts.silent ?? logger.level === 'silent';
  const options = loggerOptions(silent ? 'silent' : 'info', { redact: false });
  if (destination === 'stdout') {
    // Same stream as the lifecycle lines, so the two stay in order.
    return { write: lineWriter(pino(options, streamOf(logger))), reopen: () => undefined, close: () => Promise.resolve() };
  }
  // Lines are gathered here into writes of about 8 KiB (one write per ~20 lines instead of one each), and
  // flushed every 250 ms so a quiet period still reaches the file. Gathered in an array and joined once:
  // sonic-boom's own batching (minLength) appends each line to a growing string and measures that string's
  // byte length again on every write, which the profile showed costing more than the serialising.
  const heldLimit = opts.heldLimit ?? HELD_WHILE_FAILING;
  const { stream, regularFile } = destination === 'stderr' ? { stream: stderrDestination(heldLimit), regularFile: false } : fileDestination(destination, heldLimit);
  const batch = new LineBatch((text) => stream.write(text), 8 * 1024);
  const flusher = setInterval(() => batch.flush(), 250);
  flusher.unref();
  stream.once('close', () => clearInterval(flusher));
  const failures = new WriteFailures(logger, destination, opts.reportEveryMs ?? FAILURE_REPORT_INTERVAL_MS);
  // An unwritable file must cost access lines, not the process, nor flood the log with one error per write.
  stream.on('error', (e: Error) => failures.failed(e));
  stream.on('write', () => failures.succeeded());
  // While writes fail the lines wait in the destination, up to `heldLimit` bytes; past that whole batches are dropped.
  stream.on('drop', (text: string) => failures.dropped(text));
  return {
    write: lineWriter(pino(options, stream), batch),
    reopen: () => {
      // A pipe or a device (stderr, /dev/stdout, a FIFO) is not rotated, and opening a FIFO again could block.
      if (!regularFile) return;
      try {
        // Checked here, synchronously, so that a failure is said as what it is; sonic-boom would report
        // it as a write error. The directory is not made again: logrotate leaves it in place.
        closeSync(openSync(destination, 'a'));
      } catch (e) {
        logger.error({ accessLog: destination, err: (e as Error).message }, 'access log not reopened: lines go on to the file already open');
        return;
      }
      // The lines so far belong to the file as it was when the signal came.
      batch.flush();
      stream.reopen();
      logger.info({ accessLog: destination }, 'access log reopened');
    },
    close: async () => {
      batch.flush();
      await endDestination(stream);
      // A file that refused its last lines is still open: close it, so nothing is left to flush at exit
      // (sonic-boom's destroy() does nothing on a destination end() already closed).
      stream.destroy();
      failures.closed();
    },
  };
}

/** Whether lines are written at all, and (for tests) the bounds of a file destination, which the defaults set for production. */
export interface AccessFileOptions {
  /** Whether lines are written at all (`logLevel: silent`); by default, whether `logger` is silent. */
  readonly silent?: boolean;
  /** Bytes of lines held while the file refuses writes; beyond it lines are dropped. */
  readonly heldLimit?: number;
  /** The least time between two reports of failing writes. */
  readonly reportEveryMs?: number;
}

/** Bytes of lines held in memory, at most, while the destination takes no writes (a full disk, a stuck pipe). */
const HELD_WHILE_FAILING = 16 * 1024 * 1024;
/** A run of failing writes is reported at its start and then at most this often. */
const FAILURE_REPORT_INTERVAL_MS = 10_000;

/** stderr is often a pipe a slow reader drains: writes go through the libuv pool so they never block the proxy. */
function stderrDestination(heldLimit: number): Destination {
  return pino.destination({ dest: 2, sync: false, maxLength: heldLimit });
}

/**
 * A file, opened now. A regular file is written synchronously: a batch
 * takes a local file a few microseconds, and the thread-pool round trip of
 * an asynchronous write cost more than the write itself (1.17 against 0.36
 * CPU µs per line in 8 KiB batches, `fs.write` against `fs.writeSync`,
 * 200,000 lines, the process on one core). It is pino's own default for a
 * destination, and what nginx does. Anything else (a FIFO, /dev/stdout, a
 * device) may block while its reader is slow, so it is written
 * asynchronously, as stdout is.
 */
function fileDestination(file: string, heldLimit: number): { stream: Destination; regularFile: boolean } {
  let sync: boolean;
  try {
    makeDirectory(path.dirname(file));
    // Opened here first to fail with a clear error, and to see what the file is.
    const fd = openSync(file, 'a');
    try {
      sync = fstatSync(fd).isFile();
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    throw new Error(`accessLog: cannot open ${file}: ${(e as Error).message}`);
  }
  // By name, not by descriptor: sonic-boom can only reopen a file it opened by name.
  return { stream: pino.destination({ dest: file, append: true, sync, maxLength: heldLimit }), regularFile: sync };
}

/**
 * `mkdir -p`, one level at a time. Node's recursive `mkdir` never returns
 * where a parent exists but cannot hold the child, as under /proc or behind
 * a dangling symlink: the child's ENOENT sends it back to create the parent,
 * which exists, and round again (seen with Node 20 and 24). Here
 * each missing level is made once and the first failure is thrown; a
 * dangling symlink on the way is named as such (mkdir would say EEXIST).
 */
function makeDirectory(dir: string): void {
  for (const d of missingDirectories(dir)) mkdirSync(d);
}

/**
 * Says when writes to the access log start failing, how many lines were
 * dropped meanwhile (at most every `everyMs`), and when they succeed again.
 */
class WriteFailures {
  readonly #logger: Logger;
  readonly #destination: string;
  readonly #everyMs: number;
  #failing = false;
  #lastReport = 0;
  #lastError: Error | undefined;
  #errors = 0;
  #droppedLines = 0;

  constructor(logger: Logger, destination: string, everyMs: number) {
    this.#logger = logger;
    this.#destination = destination;
    this.#everyMs = everyMs;
  }

  failed(e: Error): void {
    // pino's guard against EPIPE re-emits the first error it sees: one failure, two events.
    if (e === this.#lastError) return;
    this.#lastError = e;
    this.#errors++;
    const now = performance.now();
    if (this.#failing && now - this.#lastReport < this.#everyMs) return;
    this.#report('error', 'access log write failed; lines are kept in memory up to a bound and dropped beyond it until writes succeed', e.message, now);
    this.#failing = true;
  }

  dropped(text: string): void {
    this.#droppedLines += countLines(text);
  }

  succeeded(): void {
    if (!this.#failing) return;
    this.#failing = false;
    this.#report('info', 'access log writes succeed again', undefined, performance.now());
  }

  closed(): void {
    if (this.#failing || this.#errors > 0 || this.#droppedLines > 0) {
      this.#report('error', 'access log closed while writes were failing; the lines it held are lost', this.#lastError?.message, performance.now());
    }
  }

  #report(level: 'error' | 'info', msg: string, err: string | undefined, now: number): void {
    this.#logger[level]({ accessLog: this.#destination, err, failedWrites: this.#errors, droppedLines: this.#droppedLines }, msg);
    this.#lastReport = now;
    this.#errors = 0;
    this.#droppedLines = 0;
  }
}

/** Lines gathered into one write of at least `size` characters (or fewer, when flushed). */
export class LineBatch {
  #lines: string[] = [];
  #chars = 0;
  readonly #out: (text: string) => unknown;
  readonly #size: number;

  constructor(out: (text: string) => unknown, size: number) {
    this.#out = out;
    this.#size = size;
  }

  write(line: string): void {
    this.#lines.push(line);
    this.#chars += line.length;
    if (this.#chars >= this.#size) this.flush();
  }

  flush(): void {
    if (this.#lines.length === 0) return;
    const text = this.#lines.length === 1 ? (this.#lines[0] as string) : this.#lines.join('');
    this.#lines = [];
    this.#chars = 0;
    this.#out(text);
  }
}

/**
 * Writes lines as `access.info(line, ACCESS_MESSAGE)` would, to the same
 * stream, but framed once (access-json.ts) instead of walked by pino per line.
 */
export function lineWriter(access: Logger, batch?: LineBatch): (line: AccessLine) => void {
  if (!access.isLevelEnabled('info')) return () => undefined;
  const frame = frameOf(access, ACCESS_MESSAGE);
  const viaPino = (line: AccessLine): void => {
    // Whatever was gathered goes first, so that lines stay in order.
    batch?.flush();
    access.info(line, ACCESS_MESSAGE);
  };
  if (frame === undefined) return viaPino;
  const stream = frame.stream;
  const out = batch === undefined ? (json: string) => stream.write(json) : (json: string) => batch.write(json);
  return (line) => {
    let json: string;
    try {
      json = accessJson(frame, line);
    } catch {
      // A value JSON.stringify cannot write: pino's own fallback serialiser can.
      viaPino(line);
      return;
    }
    out(json);
  };
}
