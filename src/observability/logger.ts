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
}

export function createLogger(opts: LoggerOptions): Logger {
  const base: pino.LoggerOptions = {
    level: opts.level,
    base: { service: 'legate' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: REDACTED_HEADERS.flatMap((h) => [`headers.${h}`, `headers["${h}"]`, `req.headers.${h}`, `req.headers["${h}"]`]),
      censor: '[redacted]',
    },
  };
  if (opts.destination !== undefined) return pino(base, opts.destination);
  if (opts.pretty ?? process.stdout.isTTY === true) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l' } } });
  }
  return pino(base, pino.destination({ dest: 1, sync: false }));
}
