/**
 * pino to stdout, JSON lines; human-readable when stdout is a terminal.
 * Headers that carry credentials are redacted at the serializer, so no log
 * line can hold them whatever a caller passes.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export const REDACTED_HEADERS = ['authorization', 'cookie', 'set-cookie', 'proxy-authorization'];

export interface LoggerOptions {
  level: string;
  /** Defaults to stdout; tests pass a stream. */
  destination?: pino.DestinationStream;
  pretty?: boolean;
  /** For tests: bytes of lines held while stdout takes no writes (HELD_WHILE_BLOCKED). */
  heldLimit?: number;
}

/**
 * Bytes of log lines held in memory while stdout takes no writes (a log
 * collector that stopped reading the container's output). Past it lines are
 * dropped and counted, so a stuck pipe costs log lines, not the pod's memory.
 * Access lines to stdout (the default) share this destination and its bound.
 */
export const HELD_WHILE_BLOCKED = 16 * 1024 * 1024;

/** The lines in a chunk of log text. */
export function countLines(text: string): number {
  let lines = 0;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) lines++;
  return lines;
}

/** '000Z"' … '999Z"': a timestamp's milliseconds, its zone and the quote that closes it. */
const MILLISECONDS: readonly string[] = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0') + 'Z"');

let timeMs = -1;
let timeField = '';
let secondMs = -1;
let secondPrefix = '';
/**
 * pino's `isoTime` formats a Date for every line (~5 µs on the hot path).
 * Within one millisecond every line carries the same text, so it is made
 * once; within one second only the milliseconds change, so the rest of it
 * (`,"time":"2026-11-24T06:05:41.`) is made once a second and the
 * milliseconds come from a table (a busy proxy writes a line or more every
 * millisecond, and formatting a Date cost ~1 µs a line in place).
 */
export function isoTimeCached(): string {
  const now = Date.now();
  if (now !== timeMs) {
    timeMs = now;
    const ms = now % 1000;
    if (ms < 0) {
      // Before 1970: not worth a table.
      timeField = `,"time":"${new Date(now).toISOString()}"`;
      return timeField;
    }
    if (now - ms !== secondMs) {
      secondMs = now - ms;
      // Up to and including the point: an ISO time always ends in ".sssZ", whatever the year's width.
      secondPrefix = `,"time":"${new Date(secondMs).toISOString().slice(0, -4)}`;
    }
    timeField = secondPrefix + (MILLISECONDS[ms] as string);
  }
  return timeField;
}

/**
 * The options every legate logger shares: one line shape. `redact: false`
 * is for loggers whose lines are built from fixed fields and never hold
 * headers (access lines), where the redaction pass would only cost time.
 */
export function loggerOptions(level: string, opts: { redact?: boolean } = {}): pino.LoggerOptions {
  return {
    level,
    base: { service: 'legate' },
    timestamp: isoTimeCached,
    formatters: { level: (label) => ({ level: label }) },
    ...(opts.redact === false
      ? {}
      : {
          redact: {
            paths: REDACTED_HEADERS.flatMap((h) => [`headers.${h}`, `headers["${h}"]`, `req.headers.${h}`, `req.headers["${h}"]`]),
            censor: '[redacted]',
          },
        }),
  };
}

/** The stream a logger writes to, so another logger can share it (and its ordering). */
export function streamOf(logger: Logger): pino.DestinationStream {
  // pino.symbols is pino's documented way in; its types do not index a Logger with them.
  return (logger as unknown as Record<symbol, pino.DestinationStream>)[pino.symbols.streamSym] as pino.DestinationStream;
}

/** What `pino.destination()` returns (a SonicBoom), named without depending on sonic-boom directly. */
export type Destination = ReturnType<typeof pino.destination>;

// Destinations legate opened itself, so shutdown can write them out in order and close them.
const owned = new WeakMap<Logger, Destination>();

/** The main logger. */
export function createLogger(opts: LoggerOptions): Logger {
  const base = loggerOptions(opts.level);
  if (opts.destination !== undefined) return pino(base, opts.destination);
  if (opts.pretty ?? process.stdout.isTTY === true) {
    const options = {
      colorize: true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'service',
      // An access line reads as a request on one line; its fields follow for the details.
      // (pino-pretty keeps an `{if key}` block only when it names that key.)
      messageFormat: '{msg}{if path} {method} {path}{end}{if status} → {status}{end}{if durationMs} in {durationMs} ms{end}',
    };
    return pino({ ...base, transport: { target: 'pino-pretty', options } });
  }
  const heldLimit = opts.heldLimit ?? HELD_WHILE_BLOCKED;
  const destination = pino.destination({ dest: 1, sync: false, maxLength: heldLimit });
  const logger = pino(base, destination);
  owned.set(logger, destination);
  reportDrops(logger, destination, heldLimit);
  return logger;
}

/**
 * Counts what a full destination drops, and says so once it has written out
 * everything it held ('drain'): any sooner and the report itself could find
 * the destination still full.
 */
function reportDrops(logger: Logger, destination: Destination, heldLimit: number): void {
  let dropped = 0;
  destination.on('drop', (text: string) => {
    dropped += countLines(text);
  });
  destination.on('drain', () => {
    if (dropped === 0) return;
    const droppedLines = dropped;
    dropped = 0;
    logger.warn({ droppedLines, heldLimit }, 'stdout took no log lines for a while; lines past the held limit were dropped');
  });
}

/**
 * Writes out every buffered line, in order, then closes the destination (a
 * file is closed; stdout and stderr stay open). For the last moments of the
 * process or of a file access log: lines logged afterwards are lost.
 *
 * Why not `logger.flush()`: with sonic-boom's default `minLength: 0` it
 * calls back at once, even while a write is in flight, and the synchronous
 * flush on exit then puts later lines before that write.
 */
export function endDestination(destination: Destination): Promise<void> {
  // `destroyed` is set by sonic-boom but missing from its types.
  if ((destination as { destroyed?: boolean }).destroyed === true) return Promise.resolve();
  return new Promise((resolve) => {
    destination.once('close', () => resolve());
    // Nowhere left to report a write error at this point.
    destination.once('error', () => resolve());
    destination.end();
  });
}

/** Writes out and closes the main logger's own destination; just flushes a stream or transport it was given. */
export function closeLogger(logger: Logger): Promise<void> {
  const destination = owned.get(logger);
  return destination === undefined ? flushLogger(logger) : endDestination(destination);
}

/**
 * Asks the destination to write out what it buffers; resolves when it says
 * it did. A flush error is not worth a rejection at shutdown.
 */
export function flushLogger(logger: Logger): Promise<void> {
  return new Promise((resolve) => {
    try {
      logger.flush(() => resolve());
    } catch {
      resolve();
    }
  });
}
