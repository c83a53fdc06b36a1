/**
 * The one source of truth for routes.yaml: the TypeScript input types
 * (`Static<...>`), the JSON Schema shipped in `schema/routes.schema.json`
 * and the validation (Ajv compiles this very object, at build time, into
 * `generated/routes-validator.ts`) all come from here.
 *
 * Outside tests, only `write-schema.ts` imports values from this module: the
 * proxy imports its types alone, so that TypeBox never loads (and costs
 * memory) there; a test walks the proxy's imports to keep it so.
 *
 * `x-expect` is a legate annotation read by the error formatter: it is the
 * human phrase for what a value must be ("a duration such as 250ms").
 */
import { Type, type Static, type TSchema, type SchemaOptions } from '@sinclair/typebox';

const expect = (phrase: string, extra: SchemaOptions = {}): SchemaOptions => ({
  'x-expect': phrase,
  ...extra,
});

/** `250ms`, `2s`, `1m`, `1h` or a plain number of milliseconds. */
export const Duration = Type.Union(
  [
    Type.Integer({ minimum: 0 }),
    Type.String({ pattern: '^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$' }),
  ],
  expect('a duration such as 250ms, 2s, 1m or a number of milliseconds', {
    description: 'A duration: 250ms, 2s, 1m, 1h, or a plain number of milliseconds.',
  }),
);

/** `512`, `64KiB`, `10MiB` (binary units; KB/MB/GB are read as KiB/MiB/GiB). */
export const Size = Type.Union(
  [
    Type.Integer({ minimum: 0 }),
    Type.String({ pattern: '^[0-9]+(\\.[0-9]+)?(B|KiB|MiB|GiB|KB|MB|GB|k|K|m|M|g|G)?$' }),
  ],
  expect('a size such as 512, 64KiB or 10MiB', {
    description: 'A size in bytes: 512, 64KiB, 10MiB, 1GiB.',
  }),
);

/** `host:port`; the host may be an IPv4 address, `[IPv6]` or a name. */
export const HostPort = Type.String({
  pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$',
  'x-expect': 'an address such as 127.0.0.1:15001',
  description: 'A listen address, host:port. Anything other than loopback must be chosen on purpose.',
});

const Name = Type.String({
  pattern: '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$',
  maxLength: 63,
  'x-expect': 'a name of lower-case letters, digits and dashes',
  description: 'Unique route name; used in metrics labels and the x-legate-route header.',
});

const HttpUrl = Type.String({
  pattern: '^https?://[^\\s/?#]+(/[^\\s?#]*)?$',
  'x-expect': 'an http:// or https:// URL without query or fragment',
  description: 'Upstream base URL: scheme, host, optional port and base path.',
});

const Method = Type.String({
  pattern: '^[A-Z]+$',
  'x-expect': 'an upper-case HTTP method such as GET',
});

const StatusCode = Type.Integer({ minimum: 100, maximum: 599 });

/** A retry condition: a named class of failure or a status code. */
export const RetryOn = Type.Union(
  [
    Type.Union([
      Type.Literal('connect-failure'),
      Type.Literal('reset'),
      Type.Literal('timeout'),
      Type.Literal('5xx'),
      Type.Literal('gateway-error'),
      Type.Literal('retriable-4xx'),
    ]),
    StatusCode,
  ],
  expect('one of connect-failure, reset, timeout, 5xx, gateway-error, retriable-4xx, or a status code'),
);

/** What the circuit breaker counts as a failed try. */
export const FailOn = Type.Union(
  [
    Type.Union([
      Type.Literal('connect-failure'),
      Type.Literal('reset'),
      Type.Literal('timeout'),
      Type.Literal('tls-failure'),
      Type.Literal('5xx'),
      Type.Literal('gateway-error'),
    ]),
    StatusCode,
  ],
  expect('one of connect-failure, reset, timeout, tls-failure, 5xx, gateway-error, or a status code'),
);

export const OptOutName = Type.Union(
  [Type.Literal('retry'), Type.Literal('circuit-breaker'), Type.Literal('log')],
  expect('one of retry, circuit-breaker, log'),
);

const strict = <T extends Parameters<typeof Type.Object>[0]>(props: T, options: SchemaOptions = {}) =>
  Type.Object(props, { additionalProperties: false, ...options });

/** Record keys must be header names too: TypeBox's patternProperties does not reject other keys. */
const headerNameKey = {
  type: 'string',
  pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$',
  'x-expect': 'a header name',
} as const;

export const Match = strict(
  {
    pathPrefix: Type.Optional(
      Type.String({
        pattern: '^/',
        'x-expect': 'a path starting with /',
        description: 'Matches this path and everything below it, on segment boundaries.',
      }),
    ),
    host: Type.Optional(
      Type.String({
        pattern: '^(\\*\\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$',
        'x-expect': 'a host name such as payments.internal or *.example.com',
        description: 'Exact host, or *.suffix. Compared without the port unless a port is given.',
      }),
    ),
    methods: Type.Optional(Type.Array(Method, { minItems: 1, uniqueItems: true })),
    headers: Type.Optional(
      Type.Record(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$' }), Type.String(), {
        description: 'Request headers that must be present with exactly these values.',
        // patternProperties alone lets any other key through unchecked.
        propertyNames: headerNameKey,
      }),
    ),
  },
  { description: 'Which requests this route takes. Empty matches everything.' },
);

export const TlsPolicy = strict(
  {
    ca: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA bundle that verifies the upstream (replaces the system store).' })),
    cert: Type.Optional(Type.String({ minLength: 1, description: 'PEM client certificate chain presented to the upstream.' })),
    key: Type.Optional(Type.String({ minLength: 1, description: 'PEM private key of the client certificate.' })),
    serverName: Type.Optional(Type.String({ minLength: 1, description: 'SNI and the name the server certificate must carry.' })),
    minVersion: Type.Optional(
      Type.Union([Type.Literal('TLSv1.2'), Type.Literal('TLSv1.3')], expect('TLSv1.2 or TLSv1.3')),
    ),
  },
  { description: 'TLS towards the upstream: CA, client certificate for mTLS, SNI.' },
);

export const RetryPolicy = strict({
  retries: Type.Optional(Type.Integer({ minimum: 0, maximum: 100, description: 'Retries after the first try.' })),
  perTryTimeout: Type.Optional(Duration),
  on: Type.Optional(Type.Array(RetryOn, { uniqueItems: true })),
  methods: Type.Optional(
    Type.Array(Method, { uniqueItems: true, description: 'Non-idempotent methods that may be retried anyway.' }),
  ),
  backoff: Type.Optional(strict({ base: Type.Optional(Duration), max: Type.Optional(Duration) })),
  budget: Type.Optional(
    strict({
      ratio: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
      minPerSecond: Type.Optional(Type.Integer({ minimum: 0 })),
    }),
  ),
  maxFromHeader: Type.Optional(Type.Integer({ minimum: 0, maximum: 100 })),
  bufferLimit: Type.Optional(Size),
});

export const CircuitBreakerPolicy = strict({
  enabled: Type.Optional(Type.Boolean()),
  errorThresholdPercentage: Type.Optional(Type.Number({ minimum: 1, maximum: 100 })),
  volumeThreshold: Type.Optional(Type.Integer({ minimum: 1 })),
  window: Type.Optional(Duration),
  resetTimeout: Type.Optional(Duration),
  failOn: Type.Optional(Type.Array(FailOn, { uniqueItems: true })),
});

export const Limits = strict({
  maxRequestBody: Type.Optional(Size),
  maxConcurrent: Type.Optional(Type.Integer({ minimum: 1 })),
  maxPending: Type.Optional(Type.Integer({ minimum: 0 })),
});

export const RateLimit = strict({
  perSecond: Type.Number({ exclusiveMinimum: 0 }),
  burst: Type.Optional(Type.Integer({ minimum: 1 })),
});

const HeaderName = Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$', 'x-expect': 'a header name' });
const HeaderRules = strict({
  set: Type.Optional(
    Type.Record(HeaderName, Type.String(), {
      description: 'Headers to set, replacing any the app sent. Values may use ${env:NAME} and ${file:PATH}.',
      propertyNames: headerNameKey,
    }),
  ),
  remove: Type.Optional(Type.Array(HeaderName, { uniqueItems: true })),
});
export const HeaderPolicy = strict({
  request: Type.Optional(HeaderRules),
  response: Type.Optional(HeaderRules),
});

export const Discovery = strict({
  type: Type.Union([Type.Literal('dns'), Type.Literal('dns-srv')], expect('dns or dns-srv')),
  name: Type.Optional(Type.String({ minLength: 1, description: 'SRV name such as _http._tcp.billing.internal (dns-srv only).' })),
  refresh: Type.Optional(Duration),
  resolver: Type.Optional(HostPort),
});

export const WeightedEndpoint = strict({
  url: HttpUrl,
  weight: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  tls: Type.Optional(TlsPolicy),
});

export const Upstream = Type.Union(
  [
    HttpUrl,
    Type.Array(WeightedEndpoint, { minItems: 1 }),
    strict({ url: HttpUrl, discovery: Type.Optional(Discovery) }),
  ],
  expect('a URL, a list of {url, weight}, or {url, discovery}'),
);

/** Policy keys that `defaults:` may set and a route may override. */
const policyProps = {
  timeout: Type.Optional(Duration),
  idleTimeout: Type.Optional(Duration),
  stripPrefix: Type.Optional(Type.Boolean()),
  preserveHost: Type.Optional(Type.Boolean()),
  limits: Type.Optional(Limits),
  retry: Type.Optional(RetryPolicy),
  circuitBreaker: Type.Optional(CircuitBreakerPolicy),
  tls: Type.Optional(TlsPolicy),
  optOut: Type.Optional(Type.Array(OptOutName, { uniqueItems: true })),
  rateLimit: Type.Optional(RateLimit),
  headers: Type.Optional(HeaderPolicy),
  trustControlHeaders: Type.Optional(Type.Boolean()),
};

export const Defaults = strict(policyProps, { description: 'Merged under every route.' });

export const Route = strict({
  name: Name,
  match: Type.Optional(Match),
  listen: Type.Optional(HostPort),
  upstream: Upstream,
  ...policyProps,
});

export const RoutesFile = strict(
  {
    $schema: Type.Optional(Type.String()),
    listen: Type.Optional(HostPort),
    admin: Type.Optional(HostPort),
    drainTimeout: Type.Optional(Duration),
    logLevel: Type.Optional(
      Type.Union(
        ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
        expect('one of fatal, error, warn, info, debug, trace, silent'),
      ),
    ),
    accessLog: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          'Where access lines go: "stdout" (default), "stderr", or a file path (appended, created with its directory; legate does not start if it cannot be opened).',
      }),
    ),
    limits: Type.Optional(
      strict({
        maxConnections: Type.Optional(Type.Integer({ minimum: 1 })),
        headersTimeout: Type.Optional(Duration),
        requestTimeout: Type.Optional(Duration),
        maxHeaderSize: Type.Optional(Size),
      }),
    ),
    defaults: Type.Optional(Defaults),
    routes: Type.Array(Route),
  },
  {
    $id: 'https://legate.dev/schema/routes.schema.json',
    title: 'legate routes.yaml',
    description: 'Configuration of the legate ambassador sidecar.',
  },
);

export type RoutesFileInput = Static<typeof RoutesFile>;
export type RouteInput = Static<typeof Route>;
export type DefaultsInput = Static<typeof Defaults>;
export type UpstreamInput = Static<typeof Upstream>;
export type TlsInput = Static<typeof TlsPolicy>;
export type RetryOnInput = Static<typeof RetryOn>;
export type FailOnInput = Static<typeof FailOn>;
export type OptOut = Static<typeof OptOutName>;
export type DurationInput = Static<typeof Duration>;
export type SizeInput = Static<typeof Size>;

/** The JSON Schema document as shipped, draft 2020-12 style. */
export function routesJsonSchema(): TSchema {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    ...structuredClone(RoutesFile),
  };
}
