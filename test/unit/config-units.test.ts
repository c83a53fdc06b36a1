import { describe, it, expect } from 'vitest';
import { formatDuration, formatSize, parseDuration, parseSize } from '../../src/config/units.js';

describe('parseDuration', () => {
  it.each([
    [0, 0],
    [250, 250],
    ['250', 250],
    ['250ms', 250],
    ['2s', 2_000],
    ['1.5s', 1_500],
    ['0.25s', 250],
    ['1m', 60_000],
    ['1.5m', 90_000],
    ['1h', 3_600_000],
    ['0s', 0],
  ] as const)('%j → %i ms', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  it.each(['', '2 seconds', '-1s', '1d', 's', '1.s', 'abc'])('rejects %j', (input) => {
    expect(() => parseDuration(input)).toThrow(RangeError);
  });

  it.each([-1, Number.NaN, Number.POSITIVE_INFINITY])('rejects the number %d', (input) => {
    expect(() => parseDuration(input)).toThrow(RangeError);
  });
});

describe('parseSize', () => {
  it.each([
    [0, 0],
    [512, 512],
    ['512', 512],
    ['512B', 512],
    ['64KiB', 65_536],
    ['64KB', 65_536],
    ['64k', 65_536],
    ['64K', 65_536],
    ['10MiB', 10 * 1024 ** 2],
    ['10MB', 10 * 1024 ** 2],
    ['10M', 10 * 1024 ** 2],
    ['1GiB', 1024 ** 3],
    ['1GB', 1024 ** 3],
    ['1G', 1024 ** 3],
    ['1.5KiB', 1_536],
  ] as const)('%j → %i bytes', (input, bytes) => {
    expect(parseSize(input)).toBe(bytes);
  });

  it.each(['', '10 MiBs', '-1', '1TiB', 'KiB', '1.5.5K'])('rejects %j', (input) => {
    expect(() => parseSize(input)).toThrow(RangeError);
  });
});

describe('formatDuration', () => {
  it.each([
    [0, '0ms'],
    [250, '250ms'],
    [1_000, '1s'],
    [1_500, '1.5s'],
    [1_234, '1.234s'],
    [60_000, '1m'],
    [90_000, '1.5m'],
    [3_600_000, '1h'],
    [3_601_000, '3601s'],
  ] as const)('%i ms → %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });

  it.each([0, 1, 999, 1_001, 61_001, 5_400_000])('round-trips %i', (ms) => {
    expect(parseDuration(formatDuration(ms))).toBe(ms);
  });
});

describe('formatSize', () => {
  it.each([
    [0, '0B'],
    [512, '512B'],
    [1_000, '1000B'],
    [1_024, '1KiB'],
    [1_536, '1.5KiB'],
    [65_536, '64KiB'],
    [10 * 1024 ** 2, '10MiB'],
    [1024 ** 3, '1GiB'],
  ] as const)('%i bytes → %s', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });

  it.each([0, 1, 1_000, 1_536, 65_536, 1_048_577])('round-trips %i', (bytes) => {
    expect(parseSize(formatSize(bytes))).toBe(bytes);
  });
});
