/**
 * Durations and sizes as written in routes.yaml, to and from the numbers the
 * runtime uses (milliseconds, bytes).
 */

const DURATION_UNITS_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 } as const;

/**
 * Parses a duration into milliseconds: `250ms`, `2s`, `1.5s`, `1m`, `1h`, or
 * a plain number (or numeric string) of milliseconds.
 *
 * @throws RangeError when the value is not a duration; validated input never is.
 */
export function parseDuration(v: number | string): number {
  if (typeof v === 'number') return nonNegative(v, v, 'duration');
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$/.exec(v);
  if (m === null) throw new RangeError(`not a duration: ${JSON.stringify(v)}`);
  const unit = (m[2] ?? 'ms') as keyof typeof DURATION_UNITS_MS;
  return nonNegative(Math.round(Number(m[1]) * DURATION_UNITS_MS[unit]), v, 'duration');
}

const KIB = 1024;
/** Decimal-looking suffixes are read as binary: nobody means 10^6 bytes for a body limit. */
const SIZE_UNITS_BYTES: Readonly<Record<string, number>> = {
  '': 1,
  B: 1,
  KiB: KIB,
  KB: KIB,
  k: KIB,
  K: KIB,
  MiB: KIB ** 2,
  MB: KIB ** 2,
  m: KIB ** 2,
  M: KIB ** 2,
  GiB: KIB ** 3,
  GB: KIB ** 3,
  g: KIB ** 3,
  G: KIB ** 3,
};

/**
 * Parses a size into bytes: `512`, `64KiB`, `10MiB`, `1GiB`; `KB`/`MB`/`GB`
 * and `k`/`M`/`G` are binary units too.
 *
 * @throws RangeError when the value is not a size; validated input never is.
 */
export function parseSize(v: number | string): number {
  if (typeof v === 'number') return nonNegative(v, v, 'size');
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$/.exec(v);
  const factor = m === null ? undefined : SIZE_UNITS_BYTES[m[2] ?? ''];
  if (m === null || factor === undefined) throw new RangeError(`not a size: ${JSON.stringify(v)}`);
  return nonNegative(Math.round(Number(m[1]) * factor), v, 'size');
}

function nonNegative(n: number, original: number | string, what: string): number {
  if (!Number.isFinite(n) || n < 0) throw new RangeError(`not a ${what}: ${JSON.stringify(original)}`);
  return n;
}

/**
 * Renders milliseconds in the largest unit that states them exactly to three
 * decimals: 1500 → `1.5s`, 90000 → `1.5m`, 250 → `250ms`. The result parses
 * back to the same number.
 */
export function formatDuration(ms: number): string {
  for (const unit of ['h', 'm', 's'] as const) {
    const size = DURATION_UNITS_MS[unit];
    if (ms >= size && (ms * 1000) % size === 0) return `${trim(ms / size)}${unit}`;
  }
  return `${trim(ms)}ms`;
}

/**
 * Renders bytes in the largest binary unit that states them exactly to two
 * decimals: 65536 → `64KiB`, 1536 → `1.5KiB`, 1000 → `1000B`.
 */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [
    ['GiB', KIB ** 3],
    ['MiB', KIB ** 2],
    ['KiB', KIB],
  ] as const) {
    if (bytes >= size && (bytes * 100) % size === 0) return `${trim(bytes / size)}${unit}`;
  }
  return `${trim(bytes)}B`;
}

function trim(n: number): string {
  return String(Number(n.toFixed(3)));
}
