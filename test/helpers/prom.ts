/**
 * A small, strict parser of the Prometheus text exposition format 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/), for tests
 * that scrape `/metrics`. It rejects what Prometheus would reject (bad names,
 * bad escapes, a TYPE after samples, a family split in two, duplicate
 * series, histograms whose buckets are not cumulative) with the line number.
 */

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface Sample {
  /** The sample's own name, e.g. `legate_request_duration_seconds_bucket`. */
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
  readonly timestamp?: number;
}

export interface MetricFamily {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string | undefined;
  readonly samples: Sample[];
}

export class ExpositionError extends Error {
  constructor(line: number, message: string) {
    super(`line ${line}: ${message}`);
    this.name = 'ExpositionError';
  }
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES: ReadonlySet<string> = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);
const SUFFIXES: Readonly<Record<MetricType, readonly string[]>> = {
  counter: [''],
  gauge: [''],
  untyped: [''],
  histogram: ['_bucket', '_sum', '_count'],
  summary: ['', '_sum', '_count'],
};

/** Go's strconv.ParseFloat, as Prometheus reads sample values. */
function parseValue(text: string, line: number): number {
  if (/^[+-]?inf$/i.test(text)) return text.startsWith('-') ? -Infinity : Infinity;
  if (/^nan$/i.test(text)) return NaN;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text)) throw new ExpositionError(line, `not a number: ${JSON.stringify(text)}`);
  return Number(text);
}

function unescape(text: string, line: number, quotes: boolean): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c !== '\\') {
      out += c;
      continue;
    }
    const n = text[++i];
    if (n === '\\') out += '\\';
    else if (n === 'n') out += '\n';
    else if (n === '"' && quotes) out += '"';
    else throw new ExpositionError(line, `bad escape \\${n ?? ''}`);
  }
  return out;
}

/** Parses `{a="x",b="y"}` starting at `text[at] === '{'`; returns the labels and the index after `}`. */
function parseLabels(text: string, at: number, line: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let i = at + 1;
  for (;;) {
    while (text[i] === ' ' || text[i] === '\t') i++;
    if (text[i] === '}') return { labels, end: i + 1 };
    const nameStart = i;
    while (i < text.length && /[a-zA-Z0-9_]/.test(text[i] as string)) i++;
    const name = text.slice(nameStart, i);
    if (!LABEL_NAME.test(name)) throw new ExpositionError(line, `bad label name ${JSON.stringify(name)}`);
    if (name.startsWith('__')) throw new ExpositionError(line, `label name ${name} is reserved`);
    if (Object.hasOwn(labels, name)) throw new ExpositionError(line, `label ${name} given twice`);
    while (text[i] === ' ' || text[i] === '\t') i++;
    if (text[i] !== '=') throw new ExpositionError(line, `expected = after label ${name}`);
    i++;
    while (text[i] === ' ' || text[i] === '\t') i++;
    if (text[i] !== '"') throw new ExpositionError(line, `expected " to open the value of label ${name}`);
    i++;
    let raw = '';
    for (;;) {
      const c = text[i];
      if (c === undefined) throw new ExpositionError(line, `unterminated value of label ${name}`);
      if (c === '\\') {
        raw += c + (text[i + 1] ?? '');
        i += 2;
        continue;
      }
      if (c === '"') break;
      raw += c;
      i++;
    }
    i++;
    labels[name] = unescape(raw, line, true);
    while (text[i] === ' ' || text[i] === '\t') i++;
    if (text[i] === ',') {
      i++;
      continue;
    }
    if (text[i] === '}') return { labels, end: i + 1 };
    throw new ExpositionError(line, `expected , or } after label ${name}`);
  }
}

function seriesKey(name: string, labels: Readonly<Record<string, string>>, omit?: string): string {
  return (
    name +
    JSON.stringify(
      Object.keys(labels)
        .filter((k) => k !== omit)
        .sort()
        .map((k) => [k, labels[k]]),
    )
  );
}

/** Buckets cumulative and increasing in `le`, ending at +Inf equal to `_count`, with a `_sum`. */
function checkHistogram(f: MetricFamily): void {
  interface Group {
    buckets: Array<[number, number]>;
    sum?: number;
    count?: number;
  }
  const groups = new Map<string, Group>();
  const group = (labels: Readonly<Record<string, string>>): Group => {
    const k = seriesKey('', labels, 'le');
    let g = groups.get(k);
    if (g === undefined) groups.set(k, (g = { buckets: [] }));
    return g;
  };
  for (const s of f.samples) {
    if (s.name === `${f.name}_bucket`) {
      const le = s.labels.le;
      if (le === undefined) throw new Error(`${f.name}: a bucket without le`);
      group(s.labels).buckets.push([parseValue(le, 0), s.value]);
    } else if (s.name === `${f.name}_sum`) {
      if (Object.hasOwn(s.labels, 'le')) throw new Error(`${f.name}_sum has an le label`);
      group(s.labels).sum = s.value;
    } else {
      if (Object.hasOwn(s.labels, 'le')) throw new Error(`${f.name}_count has an le label`);
      group(s.labels).count = s.value;
    }
  }
  for (const [k, g] of groups) {
    const where = `${f.name}${k}`;
    if (g.sum === undefined || g.count === undefined) throw new Error(`${where}: _sum or _count missing`);
    const last = g.buckets[g.buckets.length - 1];
    if (last === undefined || last[0] !== Infinity) throw new Error(`${where}: no le="+Inf" bucket`);
    for (let i = 1; i < g.buckets.length; i++) {
      const [le0, c0] = g.buckets[i - 1] as [number, number];
      const [le1, c1] = g.buckets[i] as [number, number];
      if (!(le1 > le0)) throw new Error(`${where}: bucket bounds not increasing (${le0} then ${le1})`);
      if (c1 < c0) throw new Error(`${where}: bucket counts not cumulative (${c0} then ${c1})`);
    }
    if (last[1] !== g.count) throw new Error(`${where}: +Inf bucket ${last[1]} differs from _count ${g.count}`);
  }
}

/**
 * Parses a whole exposition. Families keep the order of the text; every
 * family's samples were contiguous and every series unique.
 */
export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  if (text !== '' && !text.endsWith('\n')) throw new ExpositionError(text.split('\n').length, 'the last line must end with \\n');
  const families = new Map<string, MetricFamily>();
  const closed = new Set<string>();
  const series = new Set<string>();
  const declared = new Map<string, { type?: MetricType; help?: string }>();
  let current: MetricFamily | undefined;

  const open = (name: string, line: number): MetricFamily => {
    if (current?.name === name) return current;
    if (closed.has(name) || families.has(name)) throw new ExpositionError(line, `lines of ${name} are not in one group`);
    if (current !== undefined) closed.add(current.name);
    const d = declared.get(name);
    current = { name, type: d?.type ?? 'untyped', help: d?.help, samples: [] };
    families.set(name, current);
    return current;
  };

  const lines = text.split('\n');
  lines.pop();
  lines.forEach((raw, index) => {
    const line = index + 1;
    if (raw.trim() === '') return;
    if (raw.startsWith('#')) {
      const m = /^#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(raw);
      if (m === null) return; // a plain comment
      const [, kind, name = '', rest = ''] = m;
      if (!METRIC_NAME.test(name)) throw new ExpositionError(line, `bad metric name ${JSON.stringify(name)}`);
      if (closed.has(name) || (families.has(name) && current?.name !== name)) throw new ExpositionError(line, `lines of ${name} are not in one group`);
      const d = declared.get(name) ?? {};
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new ExpositionError(line, `unknown type ${JSON.stringify(rest)}`);
        if (d.type !== undefined) throw new ExpositionError(line, `second TYPE for ${name}`);
        if (families.get(name)?.samples.length) throw new ExpositionError(line, `TYPE of ${name} after its samples`);
        d.type = rest as MetricType;
      } else {
        if (d.help !== undefined) throw new ExpositionError(line, `second HELP for ${name}`);
        d.help = unescape(rest, line, false);
      }
      declared.set(name, d);
      const f = open(name, line);
      // The family object was made before its TYPE line may have been read.
      families.set(name, (current = { ...f, type: d.type ?? f.type, help: d.help ?? f.help }));
      return;
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(raw);
    if (nameMatch === null) throw new ExpositionError(line, `not a sample: ${JSON.stringify(raw)}`);
    const name = nameMatch[0];
    let i = name.length;
    let labels: Record<string, string> = {};
    if (raw[i] === '{') {
      const parsed = parseLabels(raw, i, line);
      labels = parsed.labels;
      i = parsed.end;
    }
    const rest = raw.slice(i);
    const fields = rest.trim().split(/[ \t]+/);
    if (!/^[ \t]/.test(rest) || fields.length < 1 || fields.length > 2 || fields[0] === '') {
      throw new ExpositionError(line, `expected "value [timestamp]" after ${name}`);
    }
    const value = parseValue(fields[0] as string, line);
    let timestamp: number | undefined;
    if (fields[1] !== undefined) {
      if (!/^-?\d+$/.test(fields[1])) throw new ExpositionError(line, `bad timestamp ${fields[1]}`);
      timestamp = Number(fields[1]);
    }
    // Which family the sample is of: the one being read when the suffix fits its type, else its own untyped one.
    let familyName = name;
    if (current !== undefined) {
      for (const suffix of SUFFIXES[current.type]) {
        if (name === current.name + suffix) familyName = current.name;
      }
    }
    const family = open(familyName, line);
    if (family.type === 'histogram' && name === `${family.name}_bucket` && labels.le === undefined) {
      throw new ExpositionError(line, `${name} without an le label`);
    }
    if (family.type === 'summary' && name === family.name && labels.quantile === undefined) {
      throw new ExpositionError(line, `${name} without a quantile label`);
    }
    if (family.type === 'counter' && !(value >= 0)) throw new ExpositionError(line, `counter ${name} is ${value}`);
    const key = seriesKey(name, labels);
    if (series.has(key)) throw new ExpositionError(line, `duplicate series ${name}${JSON.stringify(labels)}`);
    series.add(key);
    family.samples.push(timestamp === undefined ? { name, labels, value } : { name, labels, value, timestamp });
  });
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);
  return families;
}

/** The value of the one sample named `name` whose labels are exactly `labels`; undefined when absent. */
export function sampleValue(families: Map<string, MetricFamily>, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = seriesKey(name, labels);
  for (const f of families.values()) {
    for (const s of f.samples) if (seriesKey(s.name, s.labels) === want) return s.value;
  }
  return undefined;
}

/** Every sample of family `family` (by the family name, e.g. the histogram's base name). */
export function samplesOf(families: Map<string, MetricFamily>, family: string): Sample[] {
  return families.get(family)?.samples ?? [];
}
