import { describe, expect, it } from 'vitest';
import { UpstreamError, LegateError } from '../../src/errors.js';
import { backoffMs, failureCondition, parseRetryAfter, RetryableResponse, statusMatches } from '../../src/layers/retry.js';
import type { UpstreamResponse } from '../../src/proxy/types.js';

describe('backoffMs: full jitter in [0, min(max, base·2^n))', () => {
  const base = 25;
  const max = 250;
  it.each([
    // retry number, ceiling
    [0, 25],
    [1, 50],
    [2, 100],
    [3, 200],
    [4, 250],
    [10, 250],
  ])('retry %i has ceiling %i', (n, ceiling) => {
    expect(backoffMs(n, base, max, () => 0)).toBe(0);
    expect(backoffMs(n, base, max, () => 0.5)).toBe(Math.floor(ceiling / 2));
    // random() < 1, so the ceiling itself is never reached.
    const top = backoffMs(n, base, max, () => 1 - Number.EPSILON);
    expect(top).toBeLessThan(ceiling);
    expect(top).toBeGreaterThanOrEqual(ceiling - 1);
  });

  it('stays within bounds for any random value', () => {
    for (let i = 0; i < 1000; i++) {
      const n = i % 12;
      const v = backoffMs(n, base, max);
      expect(v).toBeGreaterThanOrEqual(0);
      expect(v).toBeLessThan(Math.min(max, base * 2 ** n));
    }
  });

  it('is 0 when base is 0', () => {
    expect(backoffMs(3, 0, 250, () => 0.9)).toBe(0);
  });
});

describe('statusMatches', () => {
  it.each<[number, ReadonlyArray<string | number>, boolean]>([
    [500, ['5xx'], true],
    [599, ['5xx'], true],
    [499, ['5xx'], false],
    [502, ['gateway-error'], true],
    [503, ['gateway-error'], true],
    [504, ['gateway-error'], true],
    [500, ['gateway-error'], false],
    [409, ['retriable-4xx'], true],
    [429, ['retriable-4xx'], false],
    [429, [429], true],
    [503, [429], false],
    [503, ['connect-failure', 'reset', 'timeout'], false],
    [502, ['connect-failure', 'reset', 'timeout', 502, 503, 504], true],
  ])('%i against %j is %s', (status, on, expected) => {
    expect(statusMatches(status, on)).toBe(expected);
  });
});

describe('failureCondition', () => {
  const response = { status: 503 } as unknown as UpstreamResponse;
  it.each<[string, unknown, ReturnType<typeof failureCondition>]>([
    ['connect failure', new UpstreamError('upstream-connect-failure', 'h:1', 'x'), 'connect-failure'],
    ['reset', new UpstreamError('upstream-reset', 'h:1', 'x'), 'reset'],
    ['per-try timeout', new UpstreamError('upstream-timeout', 'h:1', 'x'), 'timeout'],
    ['a status the policy retries', new RetryableResponse(response), 503],
    ['TLS failure (never retried)', new UpstreamError('upstream-tls-failure', 'h:1', 'x'), undefined],
    ['the whole deadline (not a try)', new LegateError('upstream-timeout', 'deadline'), undefined],
    ['circuit open', new LegateError('circuit-open', 'open'), undefined],
    ['anything else', new Error('boom'), undefined],
  ])('%s', (_name, error, expected) => {
    expect(failureCondition(error)).toBe(expected);
  });
});

describe('parseRetryAfter', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  it.each<[string | string[] | undefined, number | undefined]>([
    ['1', 1000],
    [' 3 ', 3000],
    ['0', 0],
    [['2', '5'], 2000],
    ['Thu, 01 Jan 2026 00:00:05 GMT', 5000],
    ['Wed, 31 Dec 2025 23:59:00 GMT', 0],
    ['soon', undefined],
    ['-1', undefined],
    [undefined, undefined],
  ])('%j → %s ms', (value, expected) => {
    expect(parseRetryAfter(value, now)).toBe(expected);
  });
});
