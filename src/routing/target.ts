/**
 * Reads the request target the app sent: origin-form (`/payments/charge`,
 * with `Host`) or absolute-form (`http://payments.internal/charge`, what an
 * HTTP_PROXY client sends), and normalises the path the way the router and
 * the upstream will both see it.
 */
import { LegateError } from '../errors.js';

export interface RequestTarget {
  readonly form: 'origin' | 'absolute';
  /** Lower-cased `host[:port]` from the absolute URL or the Host header ('' if none). */
  readonly authority: string;
  /** Lower-cased host without port. */
  readonly hostname: string;
  /** Normalised path, no query. */
  readonly path: string;
  /** The path exactly as sent (no query), before normalisation. */
  readonly rawPath: string;
  /** `?…` including the question mark, or ''. Forwarded byte for byte. */
  readonly query: string;
}

const ABSOLUTE = /^https?:\/\//i;

/** Splits `host[:port]` / `[v6]:port` and lower-cases it. */
export function splitAuthority(authority: string): { authority: string; hostname: string } {
  const a = authority.toLowerCase();
  if (a.startsWith('[')) {
    const end = a.indexOf(']');
    return { authority: a, hostname: end === -1 ? a : a.slice(0, end + 1) };
  }
  const colon = a.lastIndexOf(':');
  return { authority: a, hostname: colon === -1 ? a : a.slice(0, colon) };
}

/**
 * Parses `req.url` and the Host header. Throws a 400 LegateError for a target
 * that cannot be routed safely.
 */
export function parseTarget(url: string, hostHeader: string | undefined): RequestTarget {
  let form: RequestTarget['form'] = 'origin';
  let authorityRaw = hostHeader ?? '';
  let rest = url;
  if (url.charCodeAt(0) !== 47 /* / */) {
    if (!ABSOLUTE.test(url)) {
      throw new LegateError('bad-request', `cannot route request target ${JSON.stringify(url.slice(0, 100))}`);
    }
    form = 'absolute';
    const afterScheme = url.indexOf('//') + 2;
    let slash = url.length;
    for (let i = afterScheme; i < url.length; i++) {
      const c = url.charCodeAt(i);
      if (c === 47 || c === 63 || c === 35) {
        slash = i;
        break;
      }
    }
    authorityRaw = url.slice(afterScheme, slash);
    if (authorityRaw.includes('@')) {
      throw new LegateError('bad-request', 'credentials in the request URL are not accepted');
    }
    rest = slash === url.length ? '/' : url.slice(slash);
    if (rest.charCodeAt(0) !== 47) rest = '/' + rest;
  }
  const hash = rest.indexOf('#');
  if (hash !== -1) rest = rest.slice(0, hash);
  const q = rest.indexOf('?');
  const rawPath = q === -1 ? rest : rest.slice(0, q);
  const query = q === -1 ? '' : rest.slice(q);
  const { authority, hostname } = splitAuthority(authorityRaw);
  return { form, authority, hostname, rawPath, path: normalisePath(rawPath), query };
}

const MAYBE_DOT_SEGMENT = /(^|\/)(\.|%2e)/i;

/**
 * Resolves `.` and `..` segments, also when percent-encoded (`%2e%2e`), as
 * RFC 3986 §5.2.4 does. Other percent-escapes are left alone, so `%2F` stays
 * one segment. Climbing above `/` is an error.
 */
export function normalisePath(rawPath: string): string {
  if (!MAYBE_DOT_SEGMENT.test(rawPath)) return rawPath;
  const segments = rawPath.split('/');
  const out: string[] = [];
  let trailingSlash = false;
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i] as string;
    const decoded = seg.length <= 6 ? seg.replace(/%2e/gi, '.') : seg;
    trailingSlash = false;
    if (decoded === '.') {
      trailingSlash = true;
    } else if (decoded === '..') {
      if (out.length === 0) {
        throw new LegateError('bad-request', `path ${JSON.stringify(rawPath.slice(0, 100))} climbs above /`);
      }
      out.pop();
      trailingSlash = true;
    } else {
      out.push(seg);
    }
  }
  return '/' + out.join('/') + (trailingSlash && out.length > 0 ? '/' : '');
}

/** True when `path` is `prefix` or lies below it on a segment boundary. */
export function pathHasPrefix(path: string, prefix: string): boolean {
  if (prefix === '/' || prefix === '') return true;
  const p = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  if (!path.startsWith(p)) return false;
  return path.length === p.length || path.charCodeAt(p.length) === 47;
}
