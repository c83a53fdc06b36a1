import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { formatIssue, loadConfigText, type LoadResult } from '../../src/config/load.js';
import type { LegateConfig, RouteSettings } from '../../src/config/model.js';
import { BUILTIN_DEFAULTS, mergeDeep, normalise } from '../../src/config/normalise.js';
import { tempDir } from '../helpers/temp.js';

const yaml = (...l: string[]): string => `${l.join('\n')}\n`;

function load(text: string, file = '/etc/legate/routes.yaml'): LegateConfig {
  const r = loadConfigText(text, file);
  if (!r.ok) throw new Error(`expected a valid config, got:\n${r.issues.map(formatIssue).join('\n')}`);
  return r.config;
}

function issuesOf(r: LoadResult): string[] {
  return r.ok ? [] : r.issues.map(formatIssue);
}

function route(config: LegateConfig, name: string): RouteSettings {
  const found = config.routes.find((r) => r.name === name);
  if (found === undefined) throw new Error(`no route ${name}`);
  return found;
}

describe('defaults', () => {
  const minimal = load(yaml('routes:', '  - name: a', '    upstream: http://a.internal'));
  const a = route(minimal, 'a');

  it.each([
    ['listen', minimal.listen, { host: '127.0.0.1', port: 15001, text: '127.0.0.1:15001' }],
    ['admin', minimal.admin, { host: '127.0.0.1', port: 15000, text: '127.0.0.1:15000' }],
    ['drainTimeoutMs', minimal.drainTimeoutMs, 10_000],
    ['logLevel', minimal.logLevel, 'info'],
    ['accessLog', minimal.accessLog, 'stdout'],
    ['limits', minimal.limits, { maxConnections: 10_000, headersTimeoutMs: 10_000, requestTimeoutMs: 0, maxHeaderSizeBytes: 16_384 }],
    ['timeoutMs', a.timeoutMs, 15_000],
    ['idleTimeoutMs', a.idleTimeoutMs, 60_000],
    ['stripPrefix', a.stripPrefix, false],
    ['preserveHost', a.preserveHost, false],
    ['route limits', a.limits, { maxRequestBodyBytes: 0, maxConcurrent: 0, maxPending: 0 }],
    ['retry.retries', a.retry.retries, 2],
    ['retry.perTryTimeoutMs', a.retry.perTryTimeoutMs, 0],
    ['retry.on', a.retry.on, ['connect-failure', 'reset', 'timeout', 502, 503, 504]],
    ['retry.methods', [...a.retry.methods], []],
    ['retry.backoff', a.retry.backoff, { baseMs: 25, maxMs: 250 }],
    ['retry.budget', a.retry.budget, { ratio: 0.2, minPerSecond: 10 }],
    ['retry.maxFromHeader', a.retry.maxFromHeader, 5],
    ['retry.bufferLimitBytes', a.retry.bufferLimitBytes, 65_536],
    [
      'circuitBreaker',
      a.circuitBreaker,
      {
        enabled: true,
        errorThresholdPercentage: 50,
        volumeThreshold: 10,
        windowMs: 10_000,
        resetTimeoutMs: 30_000,
        failOn: ['connect-failure', 'reset', 'timeout', '5xx'],
      },
    ],
    ['optOut', [...a.optOut], []],
    ['headers', a.headers, { request: { set: [], remove: [] }, response: { set: [], remove: [] } }],
    ['trustControlHeaders', a.trustControlHeaders, false],
    ['tls', a.tls, undefined],
    ['rateLimit', a.rateLimit, undefined],
    ['match', a.match, {}],
    ['upstream', a.upstream.endpoints.map((e) => [e.url.href, e.weight]), [['http://a.internal/', 1]]],
    ['index', a.index, 0],
    ['file', minimal.file, '/etc/legate/routes.yaml'],
  ])('built-in %s', (_name, actual, expected) => {
    expect(actual).toEqual(expected);
  });

  it('keeps every built-in default in one frozen object', () => {
    expect(Object.isFrozen(BUILTIN_DEFAULTS)).toBe(true);
    expect(Object.isFrozen(BUILTIN_DEFAULTS.route.retry.on)).toBe(true);
    expect(BUILTIN_DEFAULTS.route.retry.retries).toBe(2);
  });

  const layered = load(
    yaml(
      'defaults:',
      '  timeout: 5s',
      '  retry:',
      '    retries: 4',
      '    on: [5xx]',
      '    backoff: { base: 50ms }',
      '  circuitBreaker: { volumeThreshold: 20 }',
      '  headers:',
      '    request:',
      '      set: { Authorization: "Bearer d", x-team: core }',
      '      remove: [X-Debug]',
      'routes:',
      '  - name: inherits',
      '    upstream: http://a.internal',
      '  - name: overrides',
      '    upstream: http://b.internal',
      '    timeout: 1s',
      '    retry:',
      '      on: [reset]',
      '      backoff: { max: 1s }',
      '    circuitBreaker: { enabled: false }',
      '    headers:',
      '      request:',
      '        set: { authorization: "Bearer r" }',
    ),
  );
  const inherits = route(layered, 'inherits');
  const overrides = route(layered, 'overrides');

  it.each([
    ['file defaults beat built-in', inherits.timeoutMs, 5_000],
    ['route beats file defaults', overrides.timeoutMs, 1_000],
    ['objects merge per key (retries from defaults)', overrides.retry.retries, 4],
    ['arrays replace, not concatenate', overrides.retry.on, ['reset']],
    ['arrays from defaults replace built-in', inherits.retry.on, ['5xx']],
    ['nested objects merge per key', overrides.retry.backoff, { baseMs: 50, maxMs: 1_000 }],
    ['built-in fills what neither sets', inherits.retry.backoff, { baseMs: 50, maxMs: 250 }],
    ['sibling keys survive a partial override', overrides.circuitBreaker.volumeThreshold, 20],
    ['the override applies', overrides.circuitBreaker.enabled, false],
    ['header names are lower-cased', inherits.headers.request.set, [['authorization', 'Bearer d'], ['x-team', 'core']]],
    ['header sets merge per name, case-insensitively', overrides.headers.request.set, [['authorization', 'Bearer r'], ['x-team', 'core']]],
    ['removed header names are lower-cased', inherits.headers.request.remove, ['x-debug']],
  ])('%s', (_name, actual, expected) => {
    expect(actual).toEqual(expected);
  });

  it('mergeDeep merges objects and replaces arrays and scalars', () => {
    expect(mergeDeep({ a: { b: 1, c: [1, 2] }, d: 1 }, { a: { c: [3] }, d: undefined })).toEqual({ a: { b: 1, c: [3] }, d: 1 });
  });
});

describe('conversion', () => {
  // Token files must exist: an unreadable ${file:} is an error at load.
  const conf = tempDir('legate-conf-');
  mkdirSync(join(conf, 'secrets'));
  writeFileSync(join(conf, 'secrets', 'token'), 't1');
  writeFileSync(join(conf, 'abs-token'), 't2');
  const config = load(
    yaml(
      'listen: "[::1]:15001"',
      'drainTimeout: 1m',
      'logLevel: debug',
      'accessLog: logs/access.log',
      'limits: { maxHeaderSize: 32k, requestTimeout: 30s }',
      'routes:',
      '  - name: weighted',
      '    match: { host: API.Example.com, methods: [GET, POST], headers: { X-Tenant: blue } }',
      '    upstream:',
      '      - { url: "http://a.internal:8080/base", weight: 3 }',
      '      - url: https://b.internal',
      '    rateLimit: { perSecond: 2.5 }',
      '    optOut: [retry]',
      '    headers:',
      '      request:',
      `        set: { x-token: "\${file:secrets/token} and \${file:${join(conf, 'abs-token')}} and \${env:HOME}" }`,
      '  - name: discovered',
      '    upstream: { url: "http://billing.internal:8080", discovery: { type: dns-srv, name: _http._tcp.billing, resolver: "127.0.0.1:5353" } }',
      '    rateLimit: { perSecond: 100, burst: 200 }',
    ),
    join(conf, 'routes.yaml'),
  );
  const weighted = route(config, 'weighted');
  const discovered = route(config, 'discovered');

  it.each([
    ['IPv6 listen', config.listen, { host: '::1', port: 15001, text: '[::1]:15001' }],
    ['drainTimeoutMs', config.drainTimeoutMs, 60_000],
    ['logLevel', config.logLevel, 'debug'],
    ['accessLog resolved against the config directory', config.accessLog, join(conf, 'logs/access.log')],
    ['maxHeaderSizeBytes', config.limits.maxHeaderSizeBytes, 32_768],
    ['requestTimeoutMs', config.limits.requestTimeoutMs, 30_000],
    ['match host lower-cased', weighted.match.host, 'api.example.com'],
    ['match methods', [...(weighted.match.methods ?? [])], ['GET', 'POST']],
    ['match header names lower-cased', weighted.match.headers, [['x-tenant', 'blue']]],
    ['endpoints with weights', weighted.upstream.endpoints.map((e) => [e.url.href, e.weight]), [['http://a.internal:8080/base', 3], ['https://b.internal/', 1]]],
    ['burst defaults to perSecond rounded up', weighted.rateLimit, { perSecond: 2.5, burst: 3 }],
    ['optOut', [...weighted.optOut], ['retry']],
    [
      'relative ${file:} paths resolved, others kept',
      weighted.headers.request.set,
      [['x-token', `\${file:${join(conf, 'secrets/token')}} and \${file:${join(conf, 'abs-token')}} and \${env:HOME}`]],
    ],
    [
      'discovery',
      discovered.upstream.discovery,
      { type: 'dns-srv', name: '_http._tcp.billing', refreshMs: 30_000, resolver: { host: '127.0.0.1', port: 5353, text: '127.0.0.1:5353' } },
    ],
    ['discovery endpoint', discovered.upstream.endpoints.map((e) => e.url.href), ['http://billing.internal:8080/']],
    ['explicit burst', discovered.rateLimit, { perSecond: 100, burst: 200 }],
  ])('%s', (_name, actual, expected) => {
    expect(actual).toEqual(expected);
  });

  it('resolves relative tls paths against the config file directory (checked files aside)', () => {
    const r = loadConfigText(
      yaml('routes:', '  - name: a', '    upstream: https://a', '    tls: { ca: certs/ca.pem, serverName: a.internal }'),
      '/nonexistent-dir/routes.yaml',
    );
    expect(issuesOf(r)).toEqual([
      '/nonexistent-dir/routes.yaml:4:16 routes[0].tls.ca: cannot read /nonexistent-dir/certs/ca.pem: ENOENT: no such file or directory',
    ]);
  });
});

describe('frozen result', () => {
  const config = load(yaml('routes:', '  - name: a', '    upstream: http://a', '    match: { methods: [GET] }', '    optOut: [log]'));
  const a = route(config, 'a');

  it.each([
    ['config', config],
    ['routes', config.routes],
    ['route', a],
    ['retry', a.retry],
    ['retry.on', a.retry.on],
    ['backoff', a.retry.backoff],
    ['headers.request.set', a.headers.request.set],
    ['upstream.endpoints', a.upstream.endpoints],
    ['endpoint', a.upstream.endpoints[0]],
    ['listen', config.listen],
  ])('%s is frozen', (_name, value) => {
    expect(Object.isFrozen(value)).toBe(true);
  });

  it('refuses writes', () => {
    expect(() => {
      (config as { logLevel: string }).logLevel = 'trace';
    }).toThrow(TypeError);
    expect(() => (a.optOut as Set<string>).add('retry')).toThrow(TypeError);
    expect(() => (a.retry.methods as Set<string>).clear()).toThrow(TypeError);
    expect(() => (a.match.methods as Set<string>).delete('GET')).toThrow(TypeError);
    expect([...a.optOut]).toEqual(['log']);
  });
});

describe('policyKey', () => {
  const base = ['  - name: a', '    upstream: http://a', '    retry: { retries: 1 }'];
  const other = ['  - name: z', '    upstream: http://z'];
  const keyOf = (text: string): string => route(load(text), 'a').policyKey;
  const original = keyOf(yaml('routes:', ...base));

  it('is a stable hex digest', () => {
    expect(original).toMatch(/^[0-9a-f]{40}$/);
    expect(keyOf(yaml('routes:', ...base))).toBe(original);
  });

  it('does not change when only the index does', () => {
    const moved = load(yaml('routes:', ...other, ...base));
    expect(route(moved, 'a').index).toBe(1);
    expect(route(moved, 'a').policyKey).toBe(original);
  });

  it('does not change when the same policy is written differently', () => {
    expect(keyOf(yaml('defaults: { retry: { retries: 1 } }', 'routes:', '  - name: a', '    upstream: http://a', '    timeout: 15000'))).toBe(original);
  });

  it.each([
    ['retries', yaml('routes:', '  - name: a', '    upstream: http://a', '    retry: { retries: 2 }')],
    ['upstream', yaml('routes:', '  - name: a', '    upstream: http://b', '    retry: { retries: 1 }')],
    ['timeout via defaults', yaml('defaults: { timeout: 1s }', 'routes:', ...base)],
    ['match', yaml('routes:', ...base, '    match: { pathPrefix: /a }')],
  ])('changes when %s changes', (_name, text) => {
    expect(keyOf(text)).not.toBe(original);
  });
});

describe('semantic checks', () => {
  it.each([
    [
      'duplicate route names',
      yaml('routes:', '  - name: a', '    upstream: http://a', '  - name: a', '    upstream: http://b'),
      ['routes.yaml:4:11 routes[1].name: duplicate route name "a"; routes[0] already has it'],
    ],
    [
      'two routes on one listen address',
      yaml('routes:', '  - name: a', '    upstream: http://a', '    listen: 127.0.0.1:9001', '  - name: b', '    upstream: http://b', '    listen: 127.0.0.1:9001'),
      ['routes.yaml:7:13 routes[1].listen: 127.0.0.1:9001 is already used by routes[0] (a)'],
    ],
    [
      'a route on the proxy listener',
      yaml('listen: 127.0.0.1:15001', 'routes:', '  - name: a', '    upstream: http://a', '    listen: localhost:15001'),
      ['routes.yaml:5:13 routes[0].listen: localhost:15001 is already used by the proxy listener (listen)'],
    ],
    [
      'a route on the admin listener',
      yaml('routes:', '  - name: a', '    upstream: http://a', '    listen: 127.0.0.1:15000'),
      ['routes.yaml:4:13 routes[0].listen: 127.0.0.1:15000 is already used by the admin listener (admin)'],
    ],
    ['admin on the proxy listener', yaml('admin: 127.0.0.1:15001', 'routes: []'), ['routes.yaml:1:8 admin: 127.0.0.1:15001 is already used by the proxy listener (listen)']],
    ['port out of range', yaml('listen: 127.0.0.1:70000', 'routes: []'), ['routes.yaml:1:9 listen: port must be 0 to 65535, got "127.0.0.1:70000"']],
    [
      'stripPrefix without pathPrefix',
      yaml('routes:', '  - name: a', '    upstream: http://a', '    stripPrefix: true'),
      ['routes.yaml:4:18 routes[0].stripPrefix: is true, but match.pathPrefix is not set: there is no prefix to strip'],
    ],
    [
      'stripPrefix from defaults without pathPrefix',
      yaml('defaults: { stripPrefix: true }', 'routes:', '  - name: a', '    upstream: http://a', '    match: { pathPrefix: /a }', '  - name: b', '    upstream: http://b'),
      ['routes.yaml:1:26 defaults.stripPrefix: is true, but routes[1] (b) has no match.pathPrefix to strip'],
    ],
    [
      'backoff base over max',
      yaml('routes:', '  - name: a', '    upstream: http://a', '    retry: { backoff: { base: 1s } }'),
      ['routes.yaml:4:31 routes[0].retry.backoff.base: must not exceed retry.backoff.max (250ms), got "1s"'],
    ],
    [
      'dns-srv without name',
      yaml('routes:', '  - name: a', '    upstream:', '      url: http://a', '      discovery: { type: dns-srv }'),
      ['routes.yaml:5:18 routes[0].upstream.discovery.name: is required when discovery.type is dns-srv, e.g. _http._tcp.billing.internal'],
    ],
    [
      'one header set twice in one layer',
      yaml('routes:', '  - name: a', '    upstream: http://a', '    headers: { request: { set: { X-A: "1", x-a: "2" } } }'),
      ['routes.yaml:4:44 routes[0].headers.request.set.x-a: names the same header as "X-A"; header names are case-insensitive'],
    ],
  ])('%s', (_name, text, expected) => {
    expect(issuesOf(loadConfigText(text, 'routes.yaml'))).toEqual(expected);
  });

  it('reports all semantic errors together', () => {
    const r = loadConfigText(
      yaml('routes:', '  - name: a', '    upstream: http://a', '    stripPrefix: true', '  - name: a', '    upstream: http://a', '    retry: { backoff: { base: 1s } }'),
      'routes.yaml',
    );
    expect(issuesOf(r).map((l) => l.split(' ')[1])).toEqual(['routes[0].stripPrefix:', 'routes[1].name:', 'routes[1].retry.backoff.base:']);
  });
});

describe('warnings', () => {
  it.each([
    ['listen', yaml('listen: 0.0.0.0:15001', 'routes: []'), 'routes.yaml:1:9 listen: binding to 0.0.0.0:15001 exposes the proxy beyond this host'],
    [
      'admin',
      yaml('admin: 10.0.0.5:15000', 'routes: []'),
      'routes.yaml:1:8 admin: binding the admin listener to 10.0.0.5:15000 exposes /metrics and /config beyond this host',
    ],
    [
      'route listen',
      yaml('routes:', '  - name: a', '    upstream: http://a', '    listen: 0.0.0.0:9001'),
      'routes.yaml:4:13 routes[0].listen: binding route a to 0.0.0.0:9001 exposes it beyond this host',
    ],
  ])('warns about a non-loopback %s', (_name, text, expected) => {
    const r = loadConfigText(text, 'routes.yaml');
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.warnings).toContain(expected);
  });

  it('does not warn about loopback addresses', () => {
    const r = loadConfigText(yaml('listen: localhost:1', 'admin: "[::1]:2"', 'routes:', '  - name: a', '    upstream: http://a', '    listen: 127.0.0.2:3'), 'r.yaml');
    expect(r.ok ? r.warnings : issuesOf(r)).toEqual([]);
  });

  it('warns about a file with no routes', () => {
    const r = loadConfigText(yaml('routes: []'), 'r.yaml');
    expect(r.ok ? r.warnings : issuesOf(r)).toEqual(['r.yaml:1:9 routes: no routes: every request will get 404 no-route']);
  });
});

describe('normalise without a source', () => {
  it('builds from plain input, positions at 1:1', () => {
    const r = normalise({ routes: [{ name: 'a', upstream: 'http://a', stripPrefix: true }] }, { file: 'memory' });
    expect(r.ok ? [] : r.issues.map(formatIssue)).toEqual([
      'memory:1:1 routes[0].stripPrefix: is true, but match.pathPrefix is not set: there is no prefix to strip',
    ]);
  });
});

describe('tls files', () => {
  let dir = '';
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  };

  beforeAll(() => {
    dir = tempDir('legate-config-');
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=test', '-days', '1', '-keyout', 'k.pem', '-out', 'c.pem');
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=other', '-days', '1', '-keyout', 'k2.pem', '-out', 'c2.pem');
    mkdirSync(join(dir, 'sub'));
    writeFileSync(join(dir, 'garbage.pem'), 'this is not pem\n');
    writeFileSync(join(dir, 'broken.pem'), '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n');
    writeFileSync(join(dir, 'secret.pem'), '-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n');
    chmodSync(join(dir, 'secret.pem'), 0o000);
  });

  afterAll(() => {
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  const withTls = (tls: string): string => yaml('routes:', '  - name: a', '    upstream: https://a.internal', `    tls: ${tls}`);
  const check = (text: string): string[] => issuesOf(loadConfigText(text, join(dir, 'routes.yaml')));
  // Strip the temp dir so expectations read like the config.
  const shown = (l: string[]): string[] => l.map((x) => x.split(dir).join('DIR'));

  it('accepts a matching pair and a CA, resolving relative paths', () => {
    const r = loadConfigText(withTls('{ ca: c2.pem, cert: ./c.pem, key: k.pem, serverName: a.internal, minVersion: TLSv1.3 }'), join(dir, 'routes.yaml'));
    expect(issuesOf(r)).toEqual([]);
    if (!r.ok) return;
    const a = route(r.config, 'a');
    expect(a.tls).toEqual({ ca: join(dir, 'c2.pem'), cert: join(dir, 'c.pem'), key: join(dir, 'k.pem'), serverName: 'a.internal', minVersion: 'TLSv1.3' });
    expect(a.upstream.endpoints[0]?.tls).toEqual(a.tls);
  });

  it.each([
    ['a key that does not match', '{ cert: c.pem, key: k2.pem }', ['DIR/routes.yaml:4:30 routes[0].tls.key: DIR/k2.pem does not match the certificate in DIR/c.pem']],
    ['a missing file', '{ cert: c.pem, key: nope.pem }', ['DIR/routes.yaml:4:30 routes[0].tls.key: cannot read DIR/nope.pem: ENOENT: no such file or directory']],
    ['a directory instead of a file', '{ cert: c.pem, key: sub }', ['DIR/routes.yaml:4:30 routes[0].tls.key: cannot read DIR/sub: EISDIR: illegal operation on a directory']],
    ['a file that is not PEM', '{ ca: garbage.pem }', ['DIR/routes.yaml:4:16 routes[0].tls.ca: DIR/garbage.pem is not a PEM file (no -----BEGIN line)']],
    ['a broken certificate', '{ cert: broken.pem, key: k.pem }', [expect.stringMatching(/^DIR\/routes\.yaml:4:18 routes\[0\]\.tls\.cert: DIR\/broken\.pem is not a valid PEM certificate: /)]],
    ['cert and key swapped', '{ cert: k.pem, key: c.pem }', [
      'DIR/routes.yaml:4:18 routes[0].tls.cert: DIR/k.pem holds no PEM certificate: it holds a private key; is it swapped with tls.key?',
      'DIR/routes.yaml:4:30 routes[0].tls.key: DIR/c.pem holds no PEM private key: it holds a certificate; is it swapped with tls.cert?',
    ]],
    ['cert without key', '{ cert: c.pem }', ['DIR/routes.yaml:4:18 routes[0].tls.cert: is set without tls.key: a client certificate needs its private key']],
    ['key without cert', '{ key: k.pem }', ['DIR/routes.yaml:4:17 routes[0].tls.key: is set without tls.cert: a private key is only used with its certificate']],
  ])('reports %s, naming the file', (_name, tls, expected) => {
    expect(shown(check(withTls(tls)))).toEqual(expected);
  });

  // root reads anything, so permissions cannot be tested as root.
  it.skipIf(process.getuid?.() === 0)('reports an unreadable file with the OS error', () => {
    expect(shown(check(withTls('{ cert: c.pem, key: secret.pem }')))).toEqual([
      'DIR/routes.yaml:4:30 routes[0].tls.key: cannot read DIR/secret.pem: EACCES: permission denied',
    ]);
  });

  it('reports a problem inherited from defaults once, where it is written', () => {
    const text = yaml('defaults:', '  tls: { cert: c.pem, key: k2.pem }', 'routes:', '  - name: a', '    upstream: https://a', '  - name: b', '    upstream: https://b');
    expect(shown(check(text))).toEqual(['DIR/routes.yaml:2:28 defaults.tls.key: DIR/k2.pem does not match the certificate in DIR/c.pem']);
  });

  it('merges endpoint tls over route tls key by key and checks the result', () => {
    const text = yaml(
      'routes:',
      '  - name: a',
      '    tls: { cert: c.pem, key: k.pem, serverName: a.internal }',
      '    upstream:',
      '      - url: https://one',
      '      - url: https://two',
      '        tls: { serverName: two.internal }',
      '      - url: https://three',
      '        tls: { cert: c2.pem }',
    );
    expect(shown(check(text))).toEqual(['DIR/routes.yaml:3:30 routes[0].tls.key: DIR/k.pem does not match the certificate in DIR/c2.pem']);
    const ok = loadConfigText(text.replace('tls: { cert: c2.pem }', 'tls: { cert: c2.pem, key: k2.pem }'), join(dir, 'routes.yaml'));
    expect(issuesOf(ok)).toEqual([]);
    if (!ok.ok) return;
    const [one, two, three] = route(ok.config, 'a').upstream.endpoints;
    expect(one?.tls).toEqual({ cert: join(dir, 'c.pem'), key: join(dir, 'k.pem'), serverName: 'a.internal' });
    expect(two?.tls).toEqual({ cert: join(dir, 'c.pem'), key: join(dir, 'k.pem'), serverName: 'two.internal' });
    expect(three?.tls).toEqual({ cert: join(dir, 'c2.pem'), key: join(dir, 'k2.pem'), serverName: 'a.internal' });
  });
});
