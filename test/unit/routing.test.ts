import { describe, expect, it } from 'vitest';
import { findRoute, compileMatch, whyNot } from '../../src/routing/router.js';
import { normalisePath, parseTarget, pathHasPrefix } from '../../src/routing/target.js';
import { isLegateError } from '../../src/errors.js';
import type { MatchSettings, RouteSettings } from '../../src/config/model.js';

describe('normalisePath', () => {
  it.each([
    ['/a/b', '/a/b'],
    ['/a/./b', '/a/b'],
    ['/a/../b', '/b'],
    ['/a/%2e%2e/b', '/b'],
    ['/a/%2E/b', '/a/b'],
    ['/a/b/..', '/a/'],
    ['/a/.hidden/x', '/a/.hidden/x'],
    ['/a//b', '/a//b'],
    ['/a/%2F/b', '/a/%2F/b'],
    ['/', '/'],
  ])('%s → %s', (input, out) => {
    expect(normalisePath(input)).toBe(out);
  });

  it.each(['/..', '/a/../..', '/%2e%2e/etc/passwd'])('%s climbs above / and is refused with 400', (input) => {
    try {
      normalisePath(input);
      expect.unreachable();
    } catch (e) {
      expect(isLegateError(e) && e.status).toBe(400);
    }
  });
});

describe('pathHasPrefix', () => {
  it.each([
    ['/api', '/api', true],
    ['/api/x', '/api', true],
    ['/apix', '/api', false],
    ['/ap', '/api', false],
    ['/api/x', '/api/', true],
    ['/anything', '/', true],
  ])('%s under %s: %s', (path, prefix, want) => {
    expect(pathHasPrefix(path, prefix)).toBe(want);
  });
});

describe('parseTarget', () => {
  it('reads origin-form with Host', () => {
    expect(parseTarget('/p/x?q=1&r=//s', 'LocalHost:15001')).toEqual({
      form: 'origin',
      authority: 'localhost:15001',
      hostname: 'localhost',
      path: '/p/x',
      rawPath: '/p/x',
      query: '?q=1&r=//s',
    });
  });
  it('reads absolute-form, ignoring Host', () => {
    const t = parseTarget('http://Payments.Internal:8080/charge?x=1', 'elsewhere');
    expect(t).toMatchObject({ form: 'absolute', authority: 'payments.internal:8080', hostname: 'payments.internal', path: '/charge', query: '?x=1' });
  });
  it('reads an absolute URL without a path as /', () => {
    expect(parseTarget('http://h', undefined).path).toBe('/');
  });
  it.each(['*', 'ftp://x/y', 'http://user:pw@h/'])('refuses %s with 400', (url) => {
    expect(() => parseTarget(url, 'h')).toThrow();
  });
});

function route(name: string, match: MatchSettings) {
  return { settings: { name, match } as RouteSettings, matches: compileMatch(match) };
}

describe('findRoute', () => {
  const routes = [
    route('by-host', { host: 'payments.internal' }),
    route('wild', { host: '*.example.com', pathPrefix: '/v1' }),
    route('api-post', { pathPrefix: '/api', methods: new Set(['POST']) }),
    route('api', { pathPrefix: '/api' }),
    route('canary', { pathPrefix: '/c', headers: [['x-canary', 'yes']] }),
  ];
  const find = (method: string, url: string, host = 'localhost:15001', headers: Record<string, string> = {}) =>
    findRoute(routes, method, parseTarget(url, host), headers).settings.name;

  it('takes the first match in file order', () => {
    expect(find('POST', '/api/x')).toBe('api-post');
    expect(find('GET', '/api/x')).toBe('api');
  });
  it('matches Host in origin-form and the URL host in absolute-form', () => {
    expect(find('GET', '/anything', 'payments.internal')).toBe('by-host');
    expect(find('GET', 'http://payments.internal/anything')).toBe('by-host');
    expect(find('GET', 'http://a.b.example.com/v1/x')).toBe('wild');
  });
  it('never lets an absolute-form request reach a route that names no host', () => {
    expect(() => find('GET', 'http://evil.test/api/x')).toThrow(/no route/);
  });
  it('does not take the bare suffix for *.example.com', () => {
    expect(() => find('GET', 'http://example.com/v1/x')).toThrow(/no route/);
  });
  it('matches headers exactly', () => {
    expect(find('GET', '/c', 'h', { 'x-canary': 'yes' })).toBe('canary');
    expect(() => find('GET', '/c', 'h', { 'x-canary': 'no' })).toThrow(/no route/);
  });
  it('refuses a path that climbs out of its prefix with 400, even when another route would take it', () => {
    const withAdmin = [...routes, route('admin', { pathPrefix: '/admin' })];
    try {
      findRoute(withAdmin, 'GET', parseTarget('/api/../admin', 'h'), {});
      expect.unreachable();
    } catch (e) {
      expect(isLegateError(e) && e.code).toBe('bad-request');
    }
  });
  it('explains why a route does not match', () => {
    expect(whyNot({ pathPrefix: '/api' }, 'GET', parseTarget('/x', 'h'), {})).toBe('path /x is not under /api');
    expect(whyNot({ host: 'a.b' }, 'GET', parseTarget('/x', 'c.d'), {})).toBe('host c.d is not a.b');
    expect(whyNot({ pathPrefix: '/api' }, 'GET', parseTarget('/api/x', 'h'), {})).toBeUndefined();
  });
});
