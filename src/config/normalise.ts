/**
 * Validated routes.yaml data → the frozen `LegateConfig` the proxy runs on:
 * defaults merged, units converted, paths made absolute, and the checks that
 * a schema cannot express (uniqueness, cross-field rules, certificate files).
 */
import { isProtectedHeader } from '../layers/header-rules.js';
import { appendProblem } from '../runtime/files.js';
import { templateProblem } from '../runtime/secret-values.js';
import { X509Certificate, createHash, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import type {
  CircuitBreakerSettings,
  DiscoverySettings,
  EndpointSettings,
  HeaderRuleSettings,
  HostPort,
  LegateConfig,
  LimitSettings,
  MatchSettings,
  RetrySettings,
  RouteSettings,
  ServerLimits,
  TlsSettings,
  UpstreamSettings,
} from './model.js';
import { routesFileSchema } from './generated/routes-validator.js';
import type { DefaultsInput, RouteInput, RoutesFileInput, TlsInput } from './schema.js';
import { parseDuration, parseSize, formatDuration } from './units.js';
import { NO_SOURCE, formatIssue, formatPath, sortIssues, type ConfigIssue, type PathSegment, type SourceLocator } from './validate.js';

type DeepRequired<T> = T extends readonly unknown[]
  ? T
  : T extends object
    ? { readonly [K in keyof T]-?: DeepRequired<Exclude<T[K], undefined>> }
    : T;

/** Every per-route policy key with a built-in value (tls and rateLimit have none). */
export type RoutePolicyDefaults = DeepRequired<Omit<DefaultsInput, 'tls' | 'rateLimit'>>;

/** The shape of `BUILTIN_DEFAULTS`: what applies when routes.yaml says nothing. */
export interface BuiltinDefaults {
  readonly listen: string;
  readonly admin: string;
  readonly drainTimeout: string | number;
  readonly logLevel: NonNullable<RoutesFileInput['logLevel']>;
  readonly accessLog: string;
  readonly limits: DeepRequired<NonNullable<RoutesFileInput['limits']>>;
  readonly route: RoutePolicyDefaults;
}

/**
 * All built-in defaults, written as they would be in routes.yaml. Merge
 * order is built-in < file `defaults:` < route; objects merge per key,
 * arrays and scalars replace.
 */
export const BUILTIN_DEFAULTS: BuiltinDefaults = deepFreeze({
  listen: '127.0.0.1:15001',
  admin: '127.0.0.1:15000',
  drainTimeout: '10s',
  logLevel: 'info',
  accessLog: 'stdout',
  limits: {
    maxConnections: 10_000,
    headersTimeout: '10s',
    // 0 = none: per-route timeouts govern whole exchanges.
    requestTimeout: 0,
    maxHeaderSize: '16KiB',
  },
  route: {
    timeout: '15s',
    idleTimeout: '60s',
    stripPrefix: false,
    preserveHost: false,
    // 0 = unlimited for all three.
    limits: { maxRequestBody: 0, maxConcurrent: 0, maxPending: 0 },
    retry: {
      retries: 2,
      perTryTimeout: 0,
      on: ['connect-failure', 'reset', 'timeout', 502, 503, 504],
      methods: [],
      backoff: { base: '25ms', max: '250ms' },
      budget: { ratio: 0.2, minPerSecond: 10 },
      maxFromHeader: 5,
      bufferLimit: '64KiB',
    },
    circuitBreaker: {
      enabled: true,
      errorThresholdPercentage: 50,
      volumeThreshold: 10,
      window: '10s',
      resetTimeout: '30s',
      failOn: ['connect-failure', 'reset', 'timeout', '5xx'],
    },
    optOut: [],
    headers: { request: { set: {}, remove: [] }, response: { set: {}, remove: [] } },
    trustControlHeaders: false,
  },
});

/** `discovery.refresh` when not given. */
const DEFAULT_DISCOVERY_REFRESH = '30s';

/** How `normalise` finds files and reports positions. */
export interface NormaliseOptions {
  /** The config file as the user named it; shown in issues and warnings. */
  readonly file: string;
  /** Absolute path of the config file; relative paths resolve against its directory. Omit for in-memory configs (cwd). */
  readonly path?: string;
  /** Positions for issues; everything is at 1:1 without one. */
  readonly locator?: SourceLocator;
  /**
   * Also check that the `accessLog` file could be opened for appending
   * (`legate validate`, as `nginx -t` opens its logs). Not on start, which
   * opens it and says why it cannot, nor on reload, which keeps the file it
   * has.
   */
  readonly probeAccessLog?: boolean;
}

/** A runnable config and its warnings, or every semantic error found. */
export type NormaliseResult =
  | { readonly ok: true; readonly config: LegateConfig; readonly warnings: string[] }
  | { readonly ok: false; readonly issues: ConfigIssue[] };

type MergedPolicy = RoutePolicyDefaults & Pick<DefaultsInput, 'tls' | 'rateLimit'>;
type TlsField = 'ca' | 'cert' | 'key';

/** The policy keys a route shares with `defaults:`, from the schema so they cannot drift. */
const POLICY_KEYS = Object.keys(routesFileSchema.properties.defaults.properties);

/**
 * Builds the runtime config from schema-valid input. Never throws for bad
 * input: problems come back as issues positioned at the key concerned.
 */
export function normalise(input: RoutesFileInput, options: NormaliseOptions): NormaliseResult {
  return new Normaliser(input, options).run();
}

class Normaliser {
  private readonly issues: ConfigIssue[] = [];
  private readonly warnings: ConfigIssue[] = [];
  private readonly baseDir: string;
  private readonly locator: SourceLocator;
  /** File checks are cached: one shared CA should not be read and reported once per route. */
  private readonly certs = new Map<string, X509Certificate | null>();
  private readonly keys = new Map<string, KeyObject | null>();
  private readonly cas = new Map<string, boolean>();

  constructor(
    private readonly input: RoutesFileInput,
    private readonly options: NormaliseOptions,
  ) {
    this.baseDir = options.path === undefined || options.path === '' ? process.cwd() : dirname(options.path);
    this.locator = options.locator ?? NO_SOURCE;
  }

  run(): NormaliseResult {
    const { input } = this;
    const listen = this.hostPort(input.listen ?? BUILTIN_DEFAULTS.listen, ['listen']);
    const admin = this.hostPort(input.admin ?? BUILTIN_DEFAULTS.admin, ['admin']);
    this.warnIfExposed(listen, ['listen'], 'binding to %s exposes the proxy beyond this host');
    this.warnIfExposed(admin, ['admin'], 'binding the admin listener to %s exposes /metrics and /config beyond this host');

    const limits = mergeDeep(BUILTIN_DEFAULTS.limits, input.limits) as BuiltinDefaults['limits'];
    const serverLimits: ServerLimits = {
      maxConnections: limits.maxConnections,
      headersTimeoutMs: parseDuration(limits.headersTimeout),
      requestTimeoutMs: parseDuration(limits.requestTimeout),
      maxHeaderSizeBytes: parseSize(limits.maxHeaderSize),
    };

    const defaults = this.prepareLayer(input.defaults ?? {}, ['defaults']);
    const routes = input.routes.map((route, index) => this.route(route, index, defaults));
    if (routes.length === 0) this.warn(['routes'], 'no routes: every request will get 404 no-route');
    this.checkUniqueNames(input.routes);
    this.checkListeners(listen, admin, routes);

    const accessLog = input.accessLog ?? BUILTIN_DEFAULTS.accessLog;
    if (this.options.probeAccessLog === true && accessLog !== 'stdout' && accessLog !== 'stderr') {
      const problem = appendProblem(this.path(accessLog));
      if (problem !== undefined) this.issue(['accessLog'], 'value', `cannot be opened for appending: ${problem}`);
    }
    if (this.issues.length > 0) return { ok: false, issues: sortIssues(this.issues) };
    const config: LegateConfig = {
      file: this.options.path ?? '',
      listen,
      admin,
      drainTimeoutMs: parseDuration(input.drainTimeout ?? BUILTIN_DEFAULTS.drainTimeout),
      logLevel: input.logLevel ?? BUILTIN_DEFAULTS.logLevel,
      accessLog: accessLog === 'stdout' || accessLog === 'stderr' ? accessLog : this.path(accessLog),
      limits: serverLimits,
      routes,
    };
    return { ok: true, config: deepFreeze(config), warnings: sortIssues(this.warnings).map(formatIssue) };
  }

  private route(route: RouteInput, index: number, defaults: DefaultsInput): RouteSettings {
    const at = (...rest: PathSegment[]): PathSegment[] => ['routes', index, ...rest];
    const own = this.prepareLayer(pick(route, POLICY_KEYS) as DefaultsInput, at());
    const policy = mergeDeep(mergeDeep(BUILTIN_DEFAULTS.route, defaults), own) as MergedPolicy;
    // Where a merged value was written, so an error points at the line to fix.
    const origin = (...rel: PathSegment[]): PathSegment[] =>
      hasPath(route, rel) ? at(...rel) : hasPath(defaults, rel) ? ['defaults', ...rel] : at();

    const match = this.match(route, index);
    if (policy.stripPrefix && match.pathPrefix === undefined) {
      const where = origin('stripPrefix');
      this.issue(
        where,
        'value',
        where[0] === 'defaults'
          ? `is true, but routes[${index}] (${route.name}) has no match.pathPrefix to strip`
          : 'is true, but match.pathPrefix is not set: there is no prefix to strip',
      );
    }

    const retry = this.retry(policy, origin);
    const tls = policy.tls === undefined ? undefined : this.tls(policy.tls, (f) => origin('tls', f));
    const upstream = this.upstream(route, index, tls, (f) => origin('tls', f));
    const listen = route.listen === undefined ? undefined : this.hostPort(route.listen, at('listen'));
    if (listen !== undefined) {
      this.warnIfExposed(listen, at('listen'), `binding route ${route.name} to %s exposes it beyond this host`);
    }

    const settings: Omit<RouteSettings, 'policyKey'> = {
      name: route.name,
      index,
      match,
      ...(listen === undefined ? {} : { listen }),
      upstream,
      stripPrefix: policy.stripPrefix,
      preserveHost: policy.preserveHost,
      timeoutMs: parseDuration(policy.timeout),
      idleTimeoutMs: parseDuration(policy.idleTimeout),
      limits: this.limits(policy),
      retry,
      circuitBreaker: this.circuitBreaker(policy),
      ...(tls === undefined ? {} : { tls }),
      optOut: new FrozenSet(policy.optOut),
      ...(policy.rateLimit === undefined
        ? {}
        : {
            rateLimit: {
              perSecond: policy.rateLimit.perSecond,
              // A bucket must hold at least one token, or nothing ever passes.
              burst: policy.rateLimit.burst ?? Math.max(1, Math.ceil(policy.rateLimit.perSecond)),
            },
          }),
      headers: {
        request: this.headerRules(policy.headers.request, (name) => [...origin('headers', 'request', 'set'), name]),
        response: this.headerRules(policy.headers.response, (name) => [...origin('headers', 'response', 'set'), name]),
      },
      trustControlHeaders: policy.trustControlHeaders,
    };
    return { ...settings, policyKey: policyKeyOf(settings) };
  }

  /**
   * Lower-cases header names in one layer before merging, so that a route's
   * `Authorization` replaces the defaults' `authorization`; two spellings in
   * one layer are ambiguous and reported.
   */
  private prepareLayer(layer: DefaultsInput, at: PathSegment[]): DefaultsInput {
    if (layer.headers === undefined) return layer;
    const headers: Record<string, unknown> = {};
    for (const side of ['request', 'response'] as const) {
      const rules = layer.headers[side];
      if (rules === undefined) continue;
      headers[side] = {
        ...rules,
        ...(rules.set === undefined ? {} : { set: this.lowerKeys(rules.set, [...at, 'headers', side, 'set']) }),
        ...(rules.remove === undefined ? {} : { remove: [...new Set(rules.remove.map((h) => h.toLowerCase()))] }),
      };
    }
    return { ...layer, headers: headers as DefaultsInput['headers'] } as DefaultsInput;
  }

  private lowerKeys(record: Readonly<Record<string, string>>, at: PathSegment[]): Record<string, string> {
    const out: Record<string, string> = {};
    const firstSpelling = new Map<string, string>();
    for (const [name, value] of Object.entries(record)) {
      const lower = name.toLowerCase();
      const first = firstSpelling.get(lower);
      if (first !== undefined) {
        this.issue([...at, name], 'key', `names the same header as ${JSON.stringify(first)}; header names are case-insensitive`);
        continue;
      }
      firstSpelling.set(lower, name);
      out[lower] = value;
    }
    return out;
  }

  private match(route: RouteInput, index: number): MatchSettings {
    const m = route.match ?? {};
    const headers =
      m.headers === undefined
        ? undefined
        : Object.entries(this.lowerKeys(m.headers, ['routes', index, 'match', 'headers'])).sort(byName);
    return {
      ...(m.pathPrefix === undefined ? {} : { pathPrefix: m.pathPrefix }),
      ...(m.host === undefined ? {} : { host: m.host.toLowerCase() }),
      ...(m.methods === undefined ? {} : { methods: new FrozenSet(m.methods.map((x) => x.toUpperCase())) }),
      ...(headers === undefined ? {} : { headers }),
    };
  }

  private retry(policy: MergedPolicy, origin: (...rel: PathSegment[]) => PathSegment[]): RetrySettings {
    const r = policy.retry;
    const baseMs = parseDuration(r.backoff.base);
    const maxMs = parseDuration(r.backoff.max);
    if (baseMs > maxMs) {
      this.issue(
        origin('retry', 'backoff', 'base'),
        'value',
        `must not exceed retry.backoff.max (${formatDuration(maxMs)}), got ${JSON.stringify(r.backoff.base)}`,
      );
    }
    return {
      retries: r.retries,
      perTryTimeoutMs: parseDuration(r.perTryTimeout),
      on: [...r.on],
      methods: new FrozenSet(r.methods.map((x) => x.toUpperCase())),
      backoff: { baseMs, maxMs },
      budget: { ratio: r.budget.ratio, minPerSecond: r.budget.minPerSecond },
      maxFromHeader: r.maxFromHeader,
      bufferLimitBytes: parseSize(r.bufferLimit),
    };
  }

  private circuitBreaker(policy: MergedPolicy): CircuitBreakerSettings {
    const c = policy.circuitBreaker;
    return {
      enabled: c.enabled,
      errorThresholdPercentage: c.errorThresholdPercentage,
      volumeThreshold: c.volumeThreshold,
      windowMs: parseDuration(c.window),
      resetTimeoutMs: parseDuration(c.resetTimeout),
      failOn: [...c.failOn],
    };
  }

  private limits(policy: MergedPolicy): LimitSettings {
    return {
      maxRequestBodyBytes: parseSize(policy.limits.maxRequestBody),
      maxConcurrent: policy.limits.maxConcurrent,
      maxPending: policy.limits.maxPending,
    };
  }

  /**
   * A rule on a header legate owns, or a value whose ${env:}/${file:} cannot
   * be read now, is an error at load rather than a failed request later.
   */
  private headerRules(rules: RoutePolicyDefaults['headers']['request'], at: (name: string) => PathSegment[]): HeaderRuleSettings {
    for (const name of rules.remove) {
      if (isProtectedHeader(name)) this.issue(at(name), 'key', `${name} is hop-by-hop, framing or routing: legate sets it itself, no rule may remove it`);
    }
    return {
      set: Object.entries(rules.set)
        .map(([name, value]): readonly [string, string] => {
          const resolved = this.resolveFileRefs(value);
          if (isProtectedHeader(name)) {
            this.issue(at(name), 'key', `${name} is hop-by-hop, framing or routing: legate sets it itself, no rule may set it`);
          }
          const problem = templateProblem(resolved);
          if (problem !== undefined) this.issue(at(name), 'value', problem);
          return [name, resolved];
        })
        .sort(byName),
      remove: [...rules.remove],
    };
  }

  /** `${file:./token}` is relative to the config file, like every other path in it. */
  private resolveFileRefs(template: string): string {
    return template.replace(/\$\{file:([^}]+)\}/g, (_, p: string) => `\${file:${this.path(p)}}`);
  }

  private upstream(
    route: RouteInput,
    index: number,
    routeTls: TlsSettings | undefined,
    routeTlsOrigin: (f: TlsField) => PathSegment[],
  ): UpstreamSettings {
    const at: PathSegment[] = ['routes', index, 'upstream'];
    const up = route.upstream;
    const endpoint = (url: string, path: PathSegment[], weight: number, tls: TlsSettings | undefined): EndpointSettings => ({
      url: this.url(url, path),
      weight,
      ...(tls === undefined ? {} : { tls }),
    });
    if (typeof up === 'string') return { endpoints: [endpoint(up, at, 1, routeTls)] };
    if (Array.isArray(up)) {
      return {
        endpoints: up.map((ep, k) => {
          const epAt = [...at, k];
          // The endpoint's own tls keys win over the route's, key by key.
          const tlsInput: TlsInput | undefined =
            ep.tls === undefined ? undefined : (mergeDeep(this.rawTls(route), ep.tls) as TlsInput);
          const tls =
            tlsInput === undefined
              ? routeTls
              : this.tls(tlsInput, (f) => (ep.tls?.[f] !== undefined ? [...epAt, 'tls', f] : routeTlsOrigin(f)));
          return endpoint(ep.url, [...epAt, 'url'], ep.weight ?? 1, tls);
        }),
      };
    }
    const discovery = up.discovery === undefined ? undefined : this.discovery(up.discovery, [...at, 'discovery']);
    return {
      endpoints: [endpoint(up.url, [...at, 'url'], 1, routeTls)],
      ...(discovery === undefined ? {} : { discovery }),
    };
  }

  /** The route's merged tls input, before path resolution, for endpoint tls to merge over. */
  private rawTls(route: RouteInput): TlsInput | undefined {
    return mergeDeep(this.input.defaults?.tls, route.tls) as TlsInput | undefined;
  }

  private discovery(d: NonNullable<Extract<RouteInput['upstream'], { url: string }>['discovery']>, at: PathSegment[]): DiscoverySettings {
    if (d.type === 'dns-srv' && d.name === undefined) {
      this.issue([...at, 'name'], 'value', 'is required when discovery.type is dns-srv, e.g. _http._tcp.billing.internal');
    }
    const resolver = d.resolver === undefined ? undefined : this.hostPort(d.resolver, [...at, 'resolver']);
    return {
      type: d.type,
      ...(d.name === undefined ? {} : { name: d.name }),
      refreshMs: parseDuration(d.refresh ?? DEFAULT_DISCOVERY_REFRESH),
      ...(resolver === undefined ? {} : { resolver }),
    };
  }

  private url(text: string, at: PathSegment[]): URL {
    try {
      return new URL(text);
    } catch {
      this.issue(at, 'value', `is not a valid URL, got ${JSON.stringify(text)}`);
      return new URL('http://invalid.invalid/');
    }
  }

  /** Resolves tls paths and checks the files; `origin` says where each key was written. */
  private tls(input: TlsInput, origin: (f: TlsField) => PathSegment[]): TlsSettings {
    const tls: TlsSettings = {
      ...(input.ca === undefined ? {} : { ca: this.path(input.ca) }),
      ...(input.cert === undefined ? {} : { cert: this.path(input.cert) }),
      ...(input.key === undefined ? {} : { key: this.path(input.key) }),
      ...(input.serverName === undefined ? {} : { serverName: input.serverName }),
      ...(input.minVersion === undefined ? {} : { minVersion: input.minVersion }),
    };
    if (tls.cert !== undefined && tls.key === undefined) {
      this.issue(origin('cert'), 'value', 'is set without tls.key: a client certificate needs its private key');
    }
    if (tls.key !== undefined && tls.cert === undefined) {
      this.issue(origin('key'), 'value', 'is set without tls.cert: a private key is only used with its certificate');
    }
    if (tls.ca !== undefined) this.checkCa(tls.ca, origin('ca'));
    const cert = tls.cert === undefined ? null : this.readCert(tls.cert, origin('cert'));
    const key = tls.key === undefined ? null : this.readKey(tls.key, origin('key'));
    if (cert !== null && key !== null && tls.cert !== undefined && tls.key !== undefined && !cert.checkPrivateKey(key)) {
      this.issue(origin('key'), 'value', `${tls.key} does not match the certificate in ${tls.cert}`);
    }
    return tls;
  }

  private readPem(file: string, at: PathSegment[]): string | null {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      this.issue(at, 'value', `cannot read ${file}: ${fsErrorText(err)}`);
      return null;
    }
    if (!text.includes('-----BEGIN ')) {
      this.issue(at, 'value', `${file} is not a PEM file (no -----BEGIN line)`);
      return null;
    }
    return text;
  }

  private checkCa(file: string, at: PathSegment[]): void {
    if (this.cas.has(file)) return;
    const pem = this.readPem(file, at);
    let ok = pem !== null;
    if (pem !== null) {
      const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
      if (blocks.length === 0) {
        this.issue(at, 'value', `${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
        ok = false;
      }
      for (const [n, block] of blocks.entries()) {
        try {
          new X509Certificate(block);
        } catch (err) {
          this.issue(at, 'value', `${file}: certificate ${n + 1} is not valid: ${errorText(err)}`);
          ok = false;
        }
      }
    }
    this.cas.set(file, ok);
  }

  private readCert(file: string, at: PathSegment[]): X509Certificate | null {
    const cached = this.certs.get(file);
    if (cached !== undefined) return cached;
    let cert: X509Certificate | null = null;
    const pem = this.readPem(file, at);
    if (pem !== null) {
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
        const hint = /PRIVATE KEY-----/.test(pem) ? ': it holds a private key; is it swapped with tls.key?' : '';
        this.issue(at, 'value', `${file} holds no PEM certificate${hint}`);
      } else {
        try {
          cert = new X509Certificate(pem);
        } catch (err) {
          this.issue(at, 'value', `${file} is not a valid PEM certificate: ${errorText(err)}`);
        }
      }
    }
    this.certs.set(file, cert);
    return cert;
  }

  private readKey(file: string, at: PathSegment[]): KeyObject | null {
    const cached = this.keys.get(file);
    if (cached !== undefined) return cached;
    let key: KeyObject | null = null;
    const pem = this.readPem(file, at);
    if (pem !== null) {
      if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) {
        const hint = pem.includes('-----BEGIN CERTIFICATE-----') ? ': it holds a certificate; is it swapped with tls.cert?' : '';
        this.issue(at, 'value', `${file} holds no PEM private key${hint}`);
      } else {
        try {
          key = createPrivateKey(pem);
        } catch (err) {
          // Deliberately the OS/OpenSSL reason only: key material never goes into messages.
          this.issue(at, 'value', `${file} is not a usable private key: ${errorText(err)}`);
        }
      }
    }
    this.keys.set(file, key);
    return key;
  }

  private checkUniqueNames(routes: readonly RouteInput[]): void {
    const first = new Map<string, number>();
    routes.forEach((r, i) => {
      const seen = first.get(r.name);
      if (seen === undefined) first.set(r.name, i);
      else this.issue(['routes', i, 'name'], 'value', `duplicate route name ${JSON.stringify(r.name)}; routes[${seen}] already has it`);
    });
  }

  private checkListeners(listen: HostPort, admin: HostPort, routes: readonly RouteSettings[]): void {
    const taken: { addr: HostPort; owner: string }[] = [{ addr: listen, owner: 'the proxy listener (listen)' }];
    const claim = (addr: HostPort, owner: string, at: PathSegment[]): void => {
      const clash = taken.find((t) => sameAddress(t.addr, addr));
      if (clash !== undefined) this.issue(at, 'value', `${addr.text} is already used by ${clash.owner}`);
      else taken.push({ addr, owner });
    };
    claim(admin, 'the admin listener (admin)', ['admin']);
    for (const r of routes) {
      if (r.listen !== undefined) claim(r.listen, `routes[${r.index}] (${r.name})`, ['routes', r.index, 'listen']);
    }
  }

  private hostPort(text: string, at: PathSegment[]): HostPort {
    const cut = text.lastIndexOf(':');
    const rawHost = text.slice(0, cut);
    const port = Number(text.slice(cut + 1));
    if (!Number.isInteger(port) || port > 65_535) {
      this.issue(at, 'value', `port must be 0 to 65535, got ${JSON.stringify(text)}`);
    }
    const host = rawHost.startsWith('[') && rawHost.endsWith(']') ? rawHost.slice(1, -1) : rawHost;
    return { host, port, text };
  }

  private warnIfExposed(addr: HostPort, at: PathSegment[], template: string): void {
    if (!isLoopback(addr.host)) this.warn(at, template.replace('%s', addr.text));
  }

  private path(p: string): string {
    return isAbsolute(p) ? p : resolve(this.baseDir, p);
  }

  private issue(path: PathSegment[], target: 'key' | 'value', message: string): void {
    this.issues.push({ file: this.options.file, ...this.locator.locate(path, target), path: formatPath(path), message });
  }

  private warn(path: PathSegment[], message: string): void {
    this.warnings.push({ file: this.options.file, ...this.locator.locate(path, 'value'), path: formatPath(path), message });
  }
}

function isLoopback(host: string): boolean {
  const h = host.toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || /^::ffff:127\./.test(h);
}

const WILDCARDS = new Set(['0.0.0.0', '::', '']);

/** Whether two listeners would fight over one socket; port 0 always gets a fresh port. */
function sameAddress(a: HostPort, b: HostPort): boolean {
  if (a.port !== b.port || a.port === 0) return false;
  const host = (h: string): string => (h.toLowerCase() === 'localhost' ? '127.0.0.1' : h.toLowerCase());
  return host(a.host) === host(b.host) || WILDCARDS.has(a.host) || WILDCARDS.has(b.host);
}

function byName(a: readonly [string, string], b: readonly [string, string]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}

function fsErrorText(err: unknown): string {
  // Node's message repeats the path after a comma; the file is already named.
  const text = errorText(err);
  return text.split(', ')[0] ?? text;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** Objects merge per key, recursively; arrays and scalars in `over` replace. */
export function mergeDeep(base: unknown, over: unknown): unknown {
  if (over === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = mergeDeep(base[k], v);
  return out;
}

function hasPath(value: unknown, path: readonly PathSegment[]): boolean {
  let node: unknown = value;
  for (const seg of path) {
    if (!isPlainObject(node) || node[String(seg)] === undefined) return false;
    node = node[String(seg)];
  }
  return true;
}

function pick(obj: object, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) {
    const v = (obj as Record<string, unknown>)[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/** A digest of everything a route does, so a reload can tell an unchanged route from a changed one. */
function policyKeyOf(route: Omit<RouteSettings, 'policyKey'>): string {
  const { index: _index, ...policy } = route;
  return createHash('sha1').update(JSON.stringify(canonical(policy))).digest('hex');
}

function canonical(v: unknown): unknown {
  if (v instanceof URL) return v.href;
  if (v instanceof Set) return [...v].map(canonical).sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1));
  if (Array.isArray(v)) return v.map(canonical);
  if (typeof v === 'object' && v !== null) {
    const rec = v as Record<string, unknown>;
    return Object.fromEntries(
      Object.keys(rec)
        .sort()
        .map((k) => [k, canonical(rec[k])]),
    );
  }
  return v;
}

/** A Set that refuses changes once built; `Object.freeze` alone does not stop `add`. */
class FrozenSet<T> extends Set<T> {
  readonly #sealed: boolean;
  constructor(items: Iterable<T>) {
    super();
    for (const item of items) super.add(item);
    this.#sealed = true;
  }
  override add(value: T): this {
    if (this.#sealed) throw new TypeError('Cannot add to a frozen set');
    return super.add(value);
  }
  override delete(_value: T): boolean {
    throw new TypeError('Cannot delete from a frozen set');
  }
  override clear(): void {
    throw new TypeError('Cannot clear a frozen set');
  }
}

/** Freezes a value and everything reachable from it (URL objects keep their own internal state). */
export function deepFreeze<T>(value: T): T {
  if (typeof value !== 'object' || value === null || Object.isFrozen(value)) return value;
  Object.freeze(value);
  for (const key of Reflect.ownKeys(value)) {
    deepFreeze((value as Record<PropertyKey, unknown>)[key]);
  }
  if (value instanceof Set) for (const item of value) deepFreeze(item);
  return value;
}
