/**
 * The access line's bytes without pino's generic walk. pino serialises a
 * line key by key, looking up serializers and stringifiers and quoting every
 * key (~15 µs a request under load); an access line always has the same
 * keys in the same order, so its frame is taken once from the pino logger
 * that would have written it and only the values are serialised per line.
 * The output is pino's, byte for byte (test/unit/observability-access-json),
 * and any logger option that would change pino's output sends lines back
 * through pino itself.
 */
import pino, { type Logger } from 'pino';
import type { AccessLine } from './access-log.js';

const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

/**
 * pino's string quoting (lib/tools.js `_asString`), copied because a line
 * must carry pino's bytes, not just equivalent JSON: below 100 characters it
 * escapes only `"` and `\` and leaves a lone surrogate as it is, where
 * `JSON.stringify` writes `\udXXX`. From Node 25 pino uses `JSON.stringify`.
 */
function pinoQuote(str: string): string {
  const l = str.length;
  if (l > 100) return JSON.stringify(str);
  let result = '';
  let last = 0;
  let found = false;
  let point = 255;
  for (let i = 0; i < l && point >= 32; i++) {
    point = str.charCodeAt(i);
    if (point === 34 || point === 92) {
      result += str.slice(last, i) + '\\';
      last = i;
      found = true;
    }
  }
  result = found ? result + str.slice(last) : str;
  return point < 32 ? JSON.stringify(str) : '"' + result + '"';
}

export const quote: (s: string) => string = NODE_MAJOR >= 25 ? (s) => JSON.stringify(s) : pinoQuote;

/** `JSON.stringify(s)`, without its call when nothing in `s` needs escaping (the usual case). */
function jsonString(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 32 || c === 34 || c === 92 || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(s);
  }
  return '"' + s + '"';
}

/** '0' … '1023', made once: most integers of a line (status, attempts, small byte counts) are among them. */
const SMALL_INTEGERS: readonly string[] = Array.from({ length: 1024 }, (_, i) => JSON.stringify(i));

/** '', '.001' … '.999' without trailing zeros ('.5' for 500): the fractions of a duration in ms. */
const THOUSANDTHS: readonly string[] = Array.from({ length: 1000 }, (_, i) => (i === 0 ? '' : ('.' + String(i).padStart(3, '0')).replace(/0+$/, '')));

/**
 * A number as JSON writes it (`null` when not finite), in a string that dies
 * young. `'' + n` goes through V8's number-to-string cache, which allocates
 * each new string straight in the old generation (Node 20 and 24 alike):
 * durations are a new value in every line, so each cost ~28 bytes of old
 * generation, most of the 78–95 bytes by which a request through the full
 * chain grew it (22–37 since), and a full old generation is a mark-compact, a 13–25 ms
 * stall under load here (docs/benchmarks.md, "The 16 KiB tail").
 *
 * A line's numbers are small integers and durations rounded to the
 * microsecond (`round3`): those are put together from two tables, at a
 * third to a quarter of `JSON.stringify`'s cost. For `n === k / 1000` below 1024
 * the digits of k/1000 are the shortest that read back as n (any other
 * decimal of as few digits is at least 0.001 away), which is what
 * `JSON.stringify` writes; test/unit/observability-access-json checks
 * every such value. Anything else goes to `JSON.stringify`, which writes
 * the same digits as `'' + n` (both are ECMAScript's Number::toString)
 * without the cache.
 */
export function jsonNumber(n: number): string {
  if (n >= 0 && n < 1024) {
    const whole = n | 0;
    if (whole === n) return SMALL_INTEGERS[whole] as string;
    const k = Math.round(n * 1000);
    if (k / 1000 === n) return (SMALL_INTEGERS[whole] as string) + (THOUSANDTHS[k % 1000] as string);
  }
  return JSON.stringify(n);
}

/** A primitive as `JSON.stringify` writes it inside an array or object; undefined for anything else. */
function jsonPrimitive(v: unknown): string | undefined {
  switch (typeof v) {
    case 'string':
      return jsonString(v);
    case 'number':
      return jsonNumber(v);
    case 'boolean':
      return '' + v;
    default:
      return undefined;
  }
}

// Record keys as JSON writes them with their colon: the few keys of a try record, quoted once each.
const keyJson = new Map<string, string>();

function jsonKey(k: string): string {
  let q = keyJson.get(k);
  if (q === undefined) {
    q = jsonString(k) + ':';
    // Keys come from legate's own records; the bound only guards against a record built from input.
    if (keyJson.size < 256) keyJson.set(k, q);
  }
  return q;
}

/**
 * `JSON.stringify(o)` for a plain object of primitives (a try record), which
 * `JSON.stringify` itself writes ~3x slower; undefined for any other object.
 * Own keys in `for…in` order are the order `JSON.stringify` uses.
 */
function jsonFlatRecord(o: object): string | undefined {
  if (Object.getPrototypeOf(o) !== Object.prototype) return undefined;
  const record = o as Record<string, unknown>;
  let out = '{';
  let sep = '';
  for (const k in record) {
    if (!Object.prototype.hasOwnProperty.call(record, k)) return undefined;
    const v = record[k];
    if (v === undefined) continue;
    const s = jsonPrimitive(v);
    if (s === undefined) return undefined;
    out += sep + jsonKey(k) + s;
    sep = ',';
  }
  return out + '}';
}

/** `JSON.stringify(a)` for an array of strings or flat records (optOut, tries); anything else through `JSON.stringify`. */
function jsonArray(a: readonly unknown[]): string {
  if (Object.getPrototypeOf(a) !== Array.prototype) return JSON.stringify(a);
  if (a.length === 0) return '[]';
  let out = '[';
  for (let i = 0; i < a.length; i++) {
    const e = a[i];
    const s = typeof e === 'object' && e !== null ? jsonFlatRecord(e) : typeof e === 'string' ? jsonString(e) : undefined;
    if (s === undefined) return JSON.stringify(a);
    out += i === 0 ? s : ',' + s;
  }
  return out + ']';
}

/**
 * One value as pino's `_asJson` writes it; undefined drops the key. An
 * object `JSON.stringify` cannot write (a cycle, a BigInt) throws, and the
 * caller hands that line to pino, whose fallback serialiser copes.
 */
function json(v: unknown): string | undefined {
  switch (typeof v) {
    case 'string':
      return quote(v);
    case 'number':
      return jsonNumber(v);
    case 'boolean':
      return '' + v;
    case 'undefined':
    case 'function':
      return undefined;
    default:
      if (v === null) return 'null';
      return Array.isArray(v) ? jsonArray(v) : (JSON.stringify(v) as string | undefined);
  }
}

function field(key: string, v: unknown): string {
  const s = json(v);
  return s === undefined ? '' : key + s;
}

/** The keys as pino frames them, in the order `accessLine()` builds them. */
const K = {
  requestId: ',"requestId":',
  method: ',"method":',
  path: ',"path":',
  route: ',"route":',
  upstream: ',"upstream":',
  status: ',"status":',
  attempts: ',"attempts":',
  durationMs: ',"durationMs":',
  upstreamMs: ',"upstreamMs":',
  bytesIn: ',"bytesIn":',
  bytesOut: ',"bytesOut":',
  error: ',"error":',
  optOut: ',"optOut":',
  optOutDenied: ',"optOutDenied":',
  tries: ',"tries":',
} as const satisfies Record<keyof AccessLine, string>;

/** The fields of a line, framed as pino frames them; named loads, not a loop over keys, keep it cheap. */
function fields(line: AccessLine): string {
  return (
    field(K.requestId, line.requestId) +
    field(K.method, line.method) +
    field(K.path, line.path) +
    field(K.route, line.route) +
    field(K.upstream, line.upstream) +
    field(K.status, line.status) +
    field(K.attempts, line.attempts) +
    field(K.durationMs, line.durationMs) +
    field(K.upstreamMs, line.upstreamMs) +
    field(K.bytesIn, line.bytesIn) +
    field(K.bytesOut, line.bytesOut) +
    field(K.error, line.error) +
    field(K.optOut, line.optOut) +
    field(K.optOutDenied, line.optOutDenied) +
    field(K.tries, line.tries)
  );
}

/** What a pino logger writes around the fields of an info line with message `msg`. */
interface Frame {
  /** `{"level":"info"`, or however the logger's level formatter puts it. */
  readonly level: string;
  /** The logger's timestamp function: `,"time":…`. */
  readonly time: () => string;
  /** The base bindings: `,"service":"legate"`. */
  readonly bindings: string;
  /** `,"msg":"access"}` and the line end. */
  readonly tail: string;
  readonly stream: pino.DestinationStream;
}

type Internals = Record<symbol, unknown>;

const ACCESS_KEYS = Object.keys(K);

// pino has it (a prefix for every message) but its types do not list it.
const MSG_PREFIX = (pino.symbols as unknown as Record<string, symbol | undefined>).msgPrefixSym;

/**
 * True when pino would write an info line of an access line's keys as
 * level + time + bindings + fields + message, each value serialised alone:
 * nothing that rewrites the object, the message or the output is set.
 */
function plainPino(p: Internals): boolean {
  const s = pino.symbols;
  const formatters = p[s.formattersSym] as { log?: unknown } | undefined;
  const hooks = p[s.hooksSym] as { logMethod?: unknown; streamWrite?: unknown } | undefined;
  const serializers = (p[s.serializersSym] ?? {}) as Record<string, unknown>;
  const stringifiers = (p[s.stringifiersSym] ?? {}) as object;
  const stream = p[s.streamSym] as Internals;
  const messageKey = p[s.messageKeySym] as string;
  const errorKey = p[s.errorKeySym] as string;
  return (
    p[s.mixinSym] === undefined &&
    (MSG_PREFIX === undefined || p[MSG_PREFIX] === undefined) &&
    !p[s.nestedKeySym] &&
    formatters?.log === undefined &&
    hooks?.logMethod === undefined &&
    hooks?.streamWrite === undefined &&
    // Redaction and other per-key stringifiers live here; legate's access logger has none.
    Reflect.ownKeys(stringifiers).length === 0 &&
    !ACCESS_KEYS.includes(errorKey) &&
    !ACCESS_KEYS.includes(messageKey) &&
    [...ACCESS_KEYS, messageKey].every((k) => serializers[k] === undefined) &&
    // A multistream reads each line's level and object off the stream: only pino sets them.
    stream[s.needsMetadataGsym] !== true
  );
}

/** The frame of `logger`'s info lines with message `msg`; undefined when pino must write them itself. */
export function frameOf(logger: Logger, msg: string): Frame | undefined {
  const p = logger as unknown as Internals;
  if (!plainPino(p)) return undefined;
  const s = pino.symbols;
  const levels = p[s.lsCacheSym] as Record<number, string>;
  const level = levels[logger.levels.values.info as number];
  const time = p[s.timeSym] as () => string;
  const bindings = p[s.chindingsSym] as string;
  const end = p[s.endSym] as string;
  if (typeof level !== 'string' || typeof time !== 'function' || typeof bindings !== 'string' || typeof end !== 'string') return undefined;
  return { level, time, bindings, tail: ',"' + (p[s.messageKeySym] as string) + '":' + quote(msg) + end, stream: p[s.streamSym] as pino.DestinationStream };
}

/** The line pino would write for `line` through the logger `frame` was taken from. Throws when pino must write it. */
export function accessJson(frame: Frame, line: AccessLine): string {
  return frame.level + frame.time() + frame.bindings + fields(line) + frame.tail;
}
