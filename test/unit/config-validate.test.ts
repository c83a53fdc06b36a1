import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it, expect } from 'vitest';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { formatIssue, loadConfigFile, loadConfigText } from '../../src/config/load.js';
import { describeValue, formatPath, levenshtein, nearest, validateRoutes, validateRoutesText } from '../../src/config/validate.js';
import { checkShippedSchema, renderRoutesSchema } from '../../src/config/write-schema.js';
import { tempDir } from '../helpers/temp.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const fixtures = join(root, 'test', 'fixtures', 'config');

/** Every issue of a text as the lines a user would see. */
function lines(text: string, file = 'routes.yaml'): string[] {
  const r = validateRoutesText(text, file);
  if (r.ok) return [];
  return r.issues.map(formatIssue);
}

/** Indents with two spaces so the YAML below reads like the file it stands for. */
const yaml = (...l: string[]): string => `${l.join('\n')}\n`;

describe('validateRoutesText: positions', () => {
  // Positions are of the value, or for an unknown key of the key; line numbers are in the comments.
  const text = yaml(
    'listen: 127.0.0.1:15001', //                                      1
    'routes:', //                                                     2
    '  - name: payments', //                                          3
    '    upstream: https://payments.internal:8443/api', //            4
    '    retry:', //                                                  5
    '      retries: 3', //                                            6
    '  - name: billing', //                                           7
    '    upstream: http://billing.internal', //                       8
    '    retry:', //                                                  9
    '      retries: three', //                                        10
    '      retires: 2', //                                            11
    '    timeout: 2 seconds', //                                      12
    '  - name: Bad_Name', //                                          13
    '    upstream:', //                                               14
    '      - url: http://a.internal', //                              15
    '        weight: 5000', //                                        16
    '      - { url: http://b.internal, wieght: 2 }', //               17
  );

  it('reports every error at once, one per line, sorted by position', () => {
    expect(lines(text)).toEqual([
      'routes.yaml:10:16 routes[1].retry.retries: must be an integer >= 0, got "three"',
      'routes.yaml:11:7 routes[1].retry.retires: unknown key; did you mean "retries"?',
      'routes.yaml:12:14 routes[1].timeout: must be a duration such as 250ms, 2s, 1m or a number of milliseconds, got "2 seconds"',
      'routes.yaml:13:11 routes[2].name: must be a name of lower-case letters, digits and dashes, got "Bad_Name"',
      'routes.yaml:16:17 routes[2].upstream[0].weight: must be an integer <= 1000, got 5000',
      'routes.yaml:17:35 routes[2].upstream[1].wieght: unknown key; did you mean "weight"?',
    ]);
  });

  it('gives structured issues with 1-based line and column', () => {
    const r = validateRoutesText(text, 'conf/routes.yaml');
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues[0]).toEqual({
      file: 'conf/routes.yaml',
      line: 10,
      col: 16,
      path: 'routes[1].retry.retries',
      message: 'must be an integer >= 0, got "three"',
    });
  });
});

describe('validateRoutesText: messages', () => {
  const route = (...extra: string[]): string =>
    yaml('routes:', '  - name: a', '    upstream: http://a.internal', ...extra.map((l) => `    ${l}`));

  it.each([
    ['unknown key, near miss', route('retry: { retires: 3 }'), 'routes[0].retry.retires: unknown key; did you mean "retries"?'],
    ['unknown key, case slip', route('match: { PathPrefix: /a }'), 'routes[0].match.PathPrefix: unknown key; did you mean "pathPrefix"?'],
    [
      'unknown key, nothing near',
      route('limits: { zzzzzzzz: 1 }'),
      'routes[0].limits.zzzzzzzz: unknown key; expected one of: maxRequestBody, maxConcurrent, maxPending',
    ],
    ['top-level unknown key', yaml('lisen: 127.0.0.1:1', 'routes: []'), 'lisen: unknown key; did you mean "listen"?'],
    [
      'duration, wrong string',
      route('timeout: 2 seconds'),
      'routes[0].timeout: must be a duration such as 250ms, 2s, 1m or a number of milliseconds, got "2 seconds"',
    ],
    [
      'duration, no branch fits',
      route('timeout: 1.5'),
      'routes[0].timeout: must be a duration such as 250ms, 2s, 1m or a number of milliseconds, got 1.5',
    ],
    ['duration, integer branch narrowed', route('timeout: -5'), 'routes[0].timeout: must be an integer >= 0, got -5'],
    ['size', route('limits: { maxRequestBody: 10 MiBs }'), 'routes[0].limits.maxRequestBody: must be a size such as 512, 64KiB or 10MiB, got "10 MiBs"'],
    [
      'retry-on literal union',
      route('retry: { on: [timeout, sometimes] }'),
      'routes[0].retry.on[1]: must be one of connect-failure, reset, timeout, 5xx, gateway-error, retriable-4xx, or a status code, got "sometimes"',
    ],
    ['retry-on status branch narrowed', route('retry: { on: [700] }'), 'routes[0].retry.on[0]: must be an integer <= 599, got 700'],
    ['enum of literals', yaml('logLevel: loud', 'routes: []'), 'logLevel: must be one of fatal, error, warn, info, debug, trace, silent, got "loud"'],
    ['tls minVersion', route('tls: { minVersion: TLSv1.1 }'), 'routes[0].tls.minVersion: must be TLSv1.2 or TLSv1.3, got "TLSv1.1"'],
    [
      'upstream, no branch fits',
      yaml('routes:', '  - name: a', '    upstream: 5'),
      'routes[0].upstream: must be a URL, a list of {url, weight}, or {url, discovery}, got 5',
    ],
    [
      'upstream string branch narrowed',
      yaml('routes:', '  - name: a', '    upstream: ftp://a.internal'),
      'routes[0].upstream: must be an http:// or https:// URL without query or fragment, got "ftp://a.internal"',
    ],
    [
      'upstream list branch narrowed to the bad weight',
      yaml('routes:', '  - name: a', '    upstream: [{ url: http://a.internal, weight: 0 }]'),
      'routes[0].upstream[0].weight: must be an integer >= 1, got 0',
    ],
    [
      'upstream object branch narrowed to discovery',
      yaml('routes:', '  - name: a', '    upstream: { url: http://a.internal, discovery: { type: mdns } }'),
      'routes[0].upstream.discovery.type: must be dns or dns-srv, got "mdns"',
    ],
    ['required key', yaml('routes:', '  - name: a'), 'routes[0].upstream: required key is missing'],
    ['required top-level key', yaml('listen: 127.0.0.1:15001'), 'routes: required key is missing'],
    ['type with x-expect', yaml('listen: 15001', 'routes: []'), 'listen: must be an address such as 127.0.0.1:15001, got 15001'],
    ['type without x-expect', route('retry: 3'), 'routes[0].retry: must be a mapping, got 3'],
    ['boolean', route('stripPrefix: yes'), 'routes[0].stripPrefix: must be true or false, got "yes"'],
    ['list', yaml('routes: { a: 1 }'), 'routes: must be a list, got {"a":1}'],
    ['duplicate list items', route('optOut: [retry, log, retry]'), 'routes[0].optOut[2]: repeats "retry", already listed at routes[0].optOut[0]'],
    ['empty string', route('tls: { ca: "" }'), 'routes[0].tls.ca: must not be empty, got ""'],
    ['empty list', route('match: { methods: [] }'), 'routes[0].match.methods: must not be an empty list'],
    ['bad header name key', route('headers: { request: { set: { "bad name": x } } }'), 'routes[0].headers.request.set["bad name"]: must be a header name, got "bad name"'],
    ['exclusive minimum', route('rateLimit: { perSecond: 0 }'), 'routes[0].rateLimit.perSecond: must be a number > 0, got 0'],
    [
      'long values are truncated',
      route(`timeout: ${'x'.repeat(100)}`),
      `routes[0].timeout: must be a duration such as 250ms, 2s, 1m or a number of milliseconds, got "${'x'.repeat(56)}...`,
    ],
  ])('%s', (_name, text, expected) => {
    const got = lines(text).map((l) => l.replace(/^routes\.yaml:\d+:\d+ /, ''));
    expect(got).toEqual([expected]);
  });

  it('reports an unknown key at the key, not its value', () => {
    expect(lines(route('retry:', '  retires: 3'))).toEqual(['routes.yaml:5:7 routes[0].retry.retires: unknown key; did you mean "retries"?']);
  });

  it('reports a missing key at the mapping that lacks it', () => {
    expect(lines(yaml('routes:', '  - name: a', '  - name: b', '    upstream: http://b'))).toEqual([
      'routes.yaml:2:5 routes[0].upstream: required key is missing',
    ]);
  });

  it('finds positions through anchors and merge keys', () => {
    const text = yaml(
      'x-common: &common',
      '  retry: { retries: many }',
      'routes:',
      '  - name: a',
      '    upstream: http://a',
      '    <<: *common',
    );
    expect(lines(text)).toEqual([
      'routes.yaml:1:1 x-common: unknown key; expected one of: $schema, listen, admin, drainTimeout, logLevel, accessLog, limits, defaults, routes',
      'routes.yaml:2:21 routes[0].retry.retries: must be an integer >= 0, got "many"',
    ]);
  });
});

describe('validateRoutesText: YAML problems', () => {
  it.each([
    ['syntax error', yaml('routes: [a, b'), /^routes\.yaml:2:1 .*: YAML syntax error: /],
    ['bad indentation', yaml('routes:', '  - name: a', '   upstream: x'), /^routes\.yaml:3:\d+ .*: YAML syntax error: /],
    ['duplicate key', yaml('routes:', '  - name: a', '    name: b', '    upstream: http://a'), /^routes\.yaml:3:5 routes\[0\]\.name: duplicate key/],
    ['empty file', '', /^routes\.yaml:1:1 \(root\): the file is empty/],
    ['comments only', '# nothing\n', /^routes\.yaml:1:1 \(root\): the file is empty/],
    ['top-level list', yaml('- name: a'), /^routes\.yaml:1:1 \(root\): the top level must be a mapping .*, got a list/],
    ['top-level scalar', 'hello\n', /^routes\.yaml:1:1 \(root\): the top level must be a mapping .*, got a string "hello"/],
  ])('%s', (_name, text, pattern) => {
    const got = lines(text);
    expect(got.length).toBeGreaterThanOrEqual(1);
    expect(got[0]).toMatch(pattern);
  });
});

describe('load', () => {
  it('reports an unreadable file as one issue at 1:1', async () => {
    const r = await loadConfigFile('does/not/exist.yaml');
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toHaveLength(1);
    expect(formatIssue(r.issues[0]!)).toMatch(/^does\/not\/exist\.yaml:1:1 \(file\): cannot read the config file: ENOENT/);
  });

  it('passes the SPEC §3 example through the schema check (its certificate files do not exist here)', () => {
    const r = validateRoutesText(readFileSync(join(fixtures, 'spec-section-3.yaml'), 'utf8'), 'routes.yaml');
    expect(r.ok ? [] : r.issues.map(formatIssue)).toEqual([]);
  });

  it('loads the SPEC §12 example once its token file exists, and names the file while it does not', async () => {
    const text = readFileSync(join(fixtures, 'spec-section-12.yaml'), 'utf8');
    const missing = loadConfigText(text, 'routes.yaml');
    expect(missing.ok ? [] : missing.issues.map(formatIssue)).toEqual([
      expect.stringMatching(/^routes\.yaml:\d+:\d+ routes\[0\]\.headers\.request\.set\.authorization: .*\/var\/run\/secrets\/billing-token/),
    ]);
    const dir = tempDir('legate-spec12-');
    writeFileSync(join(dir, 'billing-token'), 'token-value\n');
    const r = loadConfigText(text.replace('/var/run/secrets/billing-token', join(dir, 'billing-token')), 'routes.yaml');
    expect(r.ok ? r.warnings : r.issues.map(formatIssue)).toEqual([]);
  });

  it('never throws for garbage input', () => {
    for (const text of ['\u0000\u0001', '{{{{', '*a', '!!binary xyz', 'routes: !!set { a }', ': :', '---\n---\n']) {
      expect(() => loadConfigText(text, 'x.yaml')).not.toThrow();
      expect(loadConfigText(text, 'x.yaml').ok).toBe(false);
    }
  });

  it('validates plain data without a source at 1:1', () => {
    const r = validateRoutes({ routes: [{ name: 'a' }] }, 'mem');
    expect(r.ok ? [] : r.issues.map(formatIssue)).toEqual(['mem:1:1 routes[0].upstream: required key is missing']);
  });
});

describe('helpers', () => {
  it.each([
    [[], '(root)'],
    [['routes', 1, 'retry', 'retries'], 'routes[1].retry.retries'],
    [['headers', 'request', 'set', 'x-api-key'], 'headers.request.set.x-api-key'],
    [['set', 'a.b'], 'set["a.b"]'],
  ] as const)('formatPath(%j) = %s', (path, text) => {
    expect(formatPath(path)).toBe(text);
  });

  it.each([
    ['retires', ['retries', 'on', 'methods'], 'retries'],
    ['timout', ['timeout', 'idleTimeout'], 'timeout'],
    ['zzz', ['timeout', 'idleTimeout'], undefined],
  ] as const)('nearest(%s) = %s', (key, known, want) => {
    expect(nearest(key, known)).toBe(want);
  });

  it('levenshtein', () => {
    expect(levenshtein('kitten', 'sitting')).toBe(3);
    expect(levenshtein('', 'abc')).toBe(3);
    expect(levenshtein('same', 'same')).toBe(0);
  });

  it('describeValue truncates to 60 characters', () => {
    expect(describeValue('x'.repeat(100))).toHaveLength(60);
    expect(describeValue({ a: 1 })).toBe('{"a":1}');
  });
});

describe('shipped JSON Schema', () => {
  const shipped = join(root, 'schema', 'routes.schema.json');

  it('equals the schema generated from schema.ts (run `npm run build && npm run schema`)', () => {
    const check = checkShippedSchema(shipped);
    expect(check.actual).toBe(check.expected);
    expect(check.upToDate).toBe(true);
  });

  const ajv = new Ajv({ allErrors: true, strict: true });
  ajv.addKeyword({ keyword: 'x-expect', schemaType: 'string' });
  const validate = ajv.compile(JSON.parse(readFileSync(shipped, 'utf8')) as object);

  it.each(['spec-section-3.yaml', 'spec-section-12.yaml'])('accepts the SPEC example %s', (name) => {
    const data: unknown = parse(readFileSync(join(fixtures, name), 'utf8'));
    expect(validate(data) ? [] : validate.errors).toEqual([]);
  });

  it('rejects what the loader rejects', () => {
    expect(validate(parse(yaml('routes:', '  - name: a', '    upstream: http://a', '    retry: { retires: 1 }')))).toBe(false);
  });

  it('is generated as pretty JSON', () => {
    expect(renderRoutesSchema()).toMatch(/^\{\n {2}"\$schema"/);
  });
});

describe('header rules at load', () => {
  it('refuse rules on headers legate owns and values whose ${env:} cannot be read, naming where', () => {
    const text = [
      'routes:',
      '  - name: a',
      '    upstream: http://x',
      '    headers:',
      '      request:',
      '        set: { host: evil.example, x-token: "${env:LEGATE_TEST_SURELY_UNSET}" }',
      '        remove: [transfer-encoding]',
      '',
    ].join('\n');
    const r = loadConfigText(text, 'routes.yaml');
    const lines = r.ok ? [] : r.issues.map(formatIssue);
    expect(lines).toHaveLength(3);
    expect(lines.some((l) => /headers\.request\.set\.host: host is hop-by-hop, framing or routing/.test(l))).toBe(true);
    expect(lines.some((l) => /headers\.request\.set\.x-token: .*LEGATE_TEST_SURELY_UNSET/.test(l))).toBe(true);
    expect(lines.some((l) => /transfer-encoding is hop-by-hop/.test(l))).toBe(true);
  });
});
