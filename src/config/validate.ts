/**
 * routes.yaml text → checked data, or every problem at once as
 * `file:line:col key.path: message` issues.
 *
 * Ajv does the checking against the one schema in `schema.ts`, with a
 * validator it generated at build time (`generated/routes-validator.ts`), so
 * that neither TypeBox nor Ajv's compiler loads in the proxy. This file turns
 * its errors into something a person can act on: positions from the YAML
 * source, unions reported by the branch the user evidently meant, and
 * `x-expect` phrases instead of raw regular expressions.
 */
import type { ErrorObject } from 'ajv';
import { LineCounter, isAlias, isMap, isPair, isScalar, isSeq, parseDocument, type Document, type Node } from 'yaml';
import { routesFileSchema, validateRoutesFile } from './generated/routes-validator.js';
import type { RoutesFileInput } from './schema.js';

/** One problem in a config file, positioned at the offending value (or key). */
export interface ConfigIssue {
  /** The file as the user named it. */
  readonly file: string;
  /** 1-based. */
  readonly line: number;
  /** 1-based. */
  readonly col: number;
  /** `a.b[1].c`; `(root)`, `(file)` or `(yaml)` when no key applies. */
  readonly path: string;
  readonly message: string;
}

/** Formats an issue as the one line users see: `file:line:col path: message`. */
export function formatIssue(i: ConfigIssue): string {
  return `${i.file}:${i.line}:${i.col} ${i.path}: ${i.message}`;
}

/** One step of a key path: a mapping key or a list index. */
export type PathSegment = string | number;

/** A 1-based position in the source text. */
export interface SourcePosition {
  readonly line: number;
  readonly col: number;
}

/**
 * Finds where a key path sits in the source. `value` is the position of the
 * value, `key` that of its key (for unknown or misplaced keys). A path that
 * does not exist in the source resolves to its deepest existing ancestor.
 */
export interface SourceLocator {
  locate(path: readonly PathSegment[], target: 'key' | 'value'): SourcePosition;
}

/** For configs built in memory: everything is at 1:1. */
export const NO_SOURCE: SourceLocator = { locate: () => ({ line: 1, col: 1 }) };

const ROOT_PATH = '(root)';

/** Renders a key path as `routes[1].retry.on[0]`; keys that are not plain words are quoted. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_$][\w$-]*$/.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out === '' ? ROOT_PATH : out;
}

const MAX_VALUE_CHARS = 60;

/** The `got …` part of a message: the value as JSON, cut to a readable length. */
export function describeValue(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS - 3)}...` : text;
}

/** A YAML node and, when it was reached through a mapping, its key node. */
interface Located {
  readonly key: Node | null;
  readonly value: Node | null;
}

class YamlLocator implements SourceLocator {
  constructor(
    private readonly doc: Document,
    private readonly lines: LineCounter,
  ) {}

  locate(path: readonly PathSegment[], target: 'key' | 'value'): SourcePosition {
    const root = this.doc.contents as Node | null;
    let current: Located = { key: null, value: root };
    let best: Node | null = root;
    for (const seg of path) {
      const next = this.child(current.value, seg);
      if (next === undefined) break;
      current = next;
      best = next.value ?? next.key ?? best;
    }
    const reached = target === 'key' ? (current.key ?? current.value) : (current.value ?? current.key);
    return this.position(reached ?? best);
  }

  private position(node: Node | null): SourcePosition {
    const offset = node?.range?.[0] ?? 0;
    const { line, col } = this.lines.linePos(offset);
    return { line: Math.max(1, line), col: Math.max(1, col) };
  }

  private child(node: Node | null, seg: PathSegment, depth = 0): Located | undefined {
    // An alias stands for its anchor; the anchor is where the value is written.
    if (node !== null && isAlias(node)) {
      const target = node.resolve(this.doc);
      return target === undefined || depth > 20 ? undefined : this.child(target as Node, seg, depth + 1);
    }
    if (node !== null && isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg];
      return item === undefined ? undefined : { key: null, value: item as Node | null };
    }
    if (node !== null && isMap(node)) {
      const name = String(seg);
      for (const pair of node.items) {
        if (isPair(pair) && keyText(pair.key) === name) {
          return { key: pair.key as Node | null, value: pair.value as Node | null };
        }
      }
      // With merge keys on, a value may come from a `<<: *anchor`.
      for (const pair of node.items) {
        if (!isPair(pair) || !isMergeKey(pair.key)) continue;
        const sources = isSeq(pair.value) ? (pair.value.items as Node[]) : [pair.value as Node | null];
        for (const source of sources) {
          const found = this.child(source, seg, depth + 1);
          if (found !== undefined) return found;
        }
      }
    }
    return undefined;
  }
}

function keyText(key: unknown): string | undefined {
  if (isScalar(key) && typeof key.value !== 'symbol') return String(key.value);
  return undefined;
}

/** With `merge: true`, yaml gives a `<<` key a symbol value. */
function isMergeKey(key: unknown): boolean {
  return isScalar(key) && (typeof key.value === 'symbol' || key.value === '<<');
}

/** The result of reading YAML text: plain data plus a way back to positions. */
export type ParseResult =
  | { readonly ok: true; readonly data: unknown; readonly locator: SourceLocator }
  | { readonly ok: false; readonly issues: ConfigIssue[] };

/** Parses YAML text; syntax errors and duplicate keys become issues. */
export function parseRoutesYaml(text: string, file: string): ParseResult {
  const lines = new LineCounter();
  const doc = parseDocument(text, {
    keepSourceTokens: true,
    lineCounter: lines,
    prettyErrors: false,
    uniqueKeys: true,
    merge: true,
  });
  const locator = new YamlLocator(doc, lines);
  if (doc.errors.length > 0) {
    const issues = doc.errors.map((err): ConfigIssue => {
      const { line, col } = lines.linePos(err.pos[0]);
      const path = pathAt(doc, err.pos[0]);
      return {
        file,
        line: Math.max(1, line),
        col: Math.max(1, col),
        path: path === null ? '(yaml)' : formatPath(path),
        message: yamlMessage(err.code, err.message),
      };
    });
    return { ok: false, issues: sortIssues(issues) };
  }
  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) {
    return {
      ok: false,
      issues: [{ file, line: 1, col: 1, path: ROOT_PATH, message: 'the file is empty; it must be a mapping with at least a routes: list' }],
    };
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    return { ok: false, issues: [{ file, line: 1, col: 1, path: '(yaml)', message: errorText(err) }] };
  }
  if (!isMap(doc.contents)) {
    const pos = locator.locate([], 'value');
    return {
      ok: false,
      issues: [
        {
          file,
          ...pos,
          path: ROOT_PATH,
          message: `the top level must be a mapping of settings (listen, defaults, routes, ...), got ${kindOf(data)} ${describeValue(data)}`,
        },
      ],
    };
  }
  return { ok: true, data, locator };
}

function yamlMessage(code: string, message: string): string {
  // yaml's own text is good; only its duplicate-key wording is vague about the fix.
  if (code === 'DUPLICATE_KEY') return 'duplicate key: each key may appear once in a mapping';
  return `YAML syntax error: ${message.split('\n')[0] ?? message}`;
}

/** The deepest key path whose source span holds `offset`, for syntax errors. */
function pathAt(doc: Document, offset: number): PathSegment[] | null {
  const path: PathSegment[] = [];
  let node = doc.contents as Node | null;
  for (let depth = 0; node !== null && depth < 100; depth++) {
    let next: Node | null = null;
    if (isMap(node)) {
      for (const pair of node.items) {
        if (!isPair(pair)) continue;
        const key = pair.key as Node | null;
        const value = pair.value as Node | null;
        const start = key?.range?.[0] ?? value?.range?.[0];
        const end = value?.range?.[2] ?? key?.range?.[2];
        if (start === undefined || end === undefined || offset < start || offset > end) continue;
        const name = keyText(key);
        if (name === undefined) return path.length > 0 ? path : null;
        path.push(name);
        next = value !== null && (value.range?.[0] ?? Infinity) <= offset ? value : null;
        break;
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => {
        const n = item as Node | null;
        if (next === null && n !== null && (n.range?.[0] ?? Infinity) <= offset && offset <= (n.range?.[2] ?? -1)) {
          path.push(i);
          next = n;
        }
      });
    }
    node = next;
  }
  return path.length > 0 ? path : null;
}

// ---------------------------------------------------------------------------
// Ajv

/** The result of checking parsed data against the schema. */
export type ValidateResult =
  | { readonly ok: true; readonly value: RoutesFileInput }
  | { readonly ok: false; readonly issues: ConfigIssue[] };

/**
 * Checks parsed data against `RoutesFile` and reports every error, each
 * once, positioned by `locator` and sorted by position.
 */
export function validateRoutes(data: unknown, file: string, locator: SourceLocator = NO_SOURCE): ValidateResult {
  if (validateRoutesFile(data)) return { ok: true, value: data };
  const errors = narrowUnions(validateRoutesFile.errors ?? []);
  const issues = errors.map((e) => toIssue(e, file, locator)).filter((i): i is ConfigIssue => i !== null);
  return { ok: false, issues: sortIssues(issues) };
}

/** Parses and validates YAML text in one step. */
export function validateRoutesText(
  text: string,
  file: string,
): { ok: true; value: RoutesFileInput; locator: SourceLocator } | { ok: false; issues: ConfigIssue[] } {
  const parsed = parseRoutesYaml(text, file);
  if (!parsed.ok) return parsed;
  const checked = validateRoutes(parsed.data, file, parsed.locator);
  return checked.ok ? { ok: true, value: checked.value, locator: parsed.locator } : checked;
}

/** Sorts by position, then path, and drops exact repeats. */
export function sortIssues(issues: readonly ConfigIssue[]): ConfigIssue[] {
  const seen = new Set<string>();
  return [...issues]
    .sort((a, b) => a.line - b.line || a.col - b.col || a.path.localeCompare(b.path) || a.message.localeCompare(b.message))
    .filter((i) => {
      const id = formatIssue(i);
      if (seen.has(id)) return false;
      seen.add(id);
      return true;
    });
}

type AjvError = ErrorObject;

/**
 * A synthetic error for a union no branch of which fits: reported with the
 * union's `x-expect` phrase rather than every branch's complaint.
 */
interface UnionMismatch {
  readonly kind: 'union';
  readonly instancePath: string;
  readonly schemaPath: string;
  readonly data: unknown;
}

type Reportable = AjvError | UnionMismatch;

function isUnionMismatch(e: Reportable): e is UnionMismatch {
  return 'kind' in e;
}

/**
 * For each failed anyOf, keeps the errors of the one branch whose JSON type
 * fits the data, or else replaces the lot with a single union mismatch.
 * Outer unions go first so that an inner union in a dropped branch vanishes
 * with it.
 */
function narrowUnions(all: readonly AjvError[]): Reportable[] {
  const live = new Set<AjvError>(all);
  const unions = all
    .filter((e) => e.keyword === 'anyOf')
    .sort((a, b) => a.schemaPath.length - b.schemaPath.length || a.instancePath.length - b.instancePath.length);
  const replacements: UnionMismatch[] = [];
  for (const union of unions) {
    if (!live.has(union)) continue;
    live.delete(union);
    const branches = Array.isArray(union.schema) ? (union.schema as unknown[]) : [];
    const inBranch = (e: AjvError, i: number): boolean =>
      e.schemaPath.startsWith(`${union.schemaPath}/${i}/`) &&
      (e.instancePath === union.instancePath || e.instancePath.startsWith(`${union.instancePath}/`));
    const fitting = branches.map((b, i) => (typeFits(b, union.data) ? i : -1)).filter((i) => i >= 0);
    const chosen = fitting.length === 1 ? fitting[0] : undefined;
    const chosenHasErrors = chosen !== undefined && [...live].some((e) => inBranch(e, chosen));
    for (const e of [...live]) {
      const branch = branches.findIndex((_, i) => inBranch(e, i));
      if (branch < 0) continue;
      if (!chosenHasErrors || branch !== chosen) live.delete(e);
    }
    if (!chosenHasErrors) {
      replacements.push({ kind: 'union', instancePath: union.instancePath, schemaPath: union.schemaPath, data: union.data });
    }
  }
  return [...all.filter((e) => live.has(e)), ...replacements];
}

/** Whether a branch's declared JSON type admits the data (no declared type admits anything). */
function typeFits(schema: unknown, data: unknown): boolean {
  const types = jsonTypes(schema);
  if (types === 'any') return true;
  const actual = jsonTypeOf(data);
  return types.has(actual) || (actual === 'integer' && types.has('number'));
}

function jsonTypes(schema: unknown): Set<string> | 'any' {
  if (!isRecord(schema)) return 'any';
  const { type } = schema;
  if (typeof type === 'string') return new Set([type]);
  if (Array.isArray(type)) return new Set(type.filter((t): t is string => typeof t === 'string'));
  if ('const' in schema) return new Set([jsonTypeOf(schema.const)]);
  const union = schema.anyOf ?? schema.oneOf;
  if (Array.isArray(union)) {
    const out = new Set<string>();
    for (const branch of union) {
      const t = jsonTypes(branch);
      if (t === 'any') return 'any';
      for (const x of t) out.add(x);
    }
    return out;
  }
  return 'any';
}

function jsonTypeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function kindOf(v: unknown): string {
  const t = jsonTypeOf(v);
  return t === 'array' ? 'a list' : t === 'object' ? 'a mapping' : t === 'integer' || t === 'number' ? 'a number' : `a ${t}`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function pointerToPath(pointer: string): PathSegment[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((raw) => raw.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^(0|[1-9][0-9]*)$/.test(s) ? Number(s) : s));
}

/**
 * The `x-expect` phrase that applies to the value a schema path ends on: the
 * deepest one met since the path last stepped into a child value.
 */
function expectPhraseAt(schemaPath: string): string | undefined {
  const segs = schemaPath.replace(/^#\/?/, '').split('/').filter((s) => s !== '').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  let node: unknown = routesFileSchema;
  let phrase = xExpect(node);
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i] ?? '';
    if (!isRecord(node) && !Array.isArray(node)) break;
    // These keywords step from an object or list to one of its children.
    const descends = ['properties', 'patternProperties', 'items', 'additionalProperties', 'propertyNames'].includes(seg);
    if (descends && (seg === 'properties' || seg === 'patternProperties')) {
      const container: unknown = (node as Record<string, unknown>)[seg];
      i++;
      node = isRecord(container) ? container[segs[i] ?? ''] : undefined;
      phrase = xExpect(node);
      continue;
    }
    node = Array.isArray(node) ? node[Number(seg)] : (node as Record<string, unknown>)[seg];
    if (descends) phrase = xExpect(node);
    else phrase = xExpect(node) ?? phrase;
  }
  return phrase;
}

function xExpect(schema: unknown): string | undefined {
  if (!isRecord(schema)) return undefined;
  const phrase = schema['x-expect'];
  return typeof phrase === 'string' ? phrase : undefined;
}

function parentOf(schemaPath: string): string {
  return schemaPath.slice(0, schemaPath.lastIndexOf('/'));
}

function typePhrase(schema: Record<string, unknown>): string {
  const type = schema.type;
  const bound =
    typeof schema.minimum === 'number'
      ? ` >= ${schema.minimum}`
      : typeof schema.exclusiveMinimum === 'number'
        ? ` > ${schema.exclusiveMinimum}`
        : '';
  switch (type) {
    case 'integer':
      return `an integer${bound}`;
    case 'number':
      return `a number${bound}`;
    case 'string':
      return 'a string';
    case 'boolean':
      return 'true or false';
    case 'object':
      return 'a mapping';
    case 'array':
      return 'a list';
    case 'null':
      return 'null';
    default:
      return `of type ${String(type)}`;
  }
}

function numberWord(schema: Record<string, unknown>): string {
  return schema.type === 'integer' ? 'an integer' : 'a number';
}

function toIssue(e: Reportable, file: string, locator: SourceLocator): ConfigIssue | null {
  const at = pointerToPath(e.instancePath);
  const issue = (path: PathSegment[], target: 'key' | 'value', message: string): ConfigIssue => ({
    file,
    ...locator.locate(path, target),
    path: formatPath(path),
    message,
  });
  const got = (v: unknown): string => `, got ${describeValue(v)}`;

  if (isUnionMismatch(e)) {
    const phrase = expectPhraseAt(e.schemaPath) ?? 'one of the allowed forms';
    return issue(at, 'value', `must be ${phrase}${got(e.data)}`);
  }

  const parent = isRecord(e.parentSchema) ? e.parentSchema : {};
  const params = e.params as Record<string, unknown>;
  const phrase = expectPhraseAt(parentOf(e.schemaPath));

  // Ajv reports a bad key name twice: a summary and the reason. Keep the reason.
  if (e.keyword === 'propertyNames') return null;
  // A failed key name: report at the key, with the key as the value.
  if (e.propertyName !== undefined) {
    return issue([...at, e.propertyName], 'key', `must be ${phrase ?? `a key matching ${String(params.pattern)}`}${got(e.propertyName)}`);
  }

  switch (e.keyword) {
    case 'additionalProperties': {
      const key = String(params.additionalProperty);
      const known = isRecord(parent.properties) ? Object.keys(parent.properties) : [];
      return issue([...at, key], 'key', unknownKeyMessage(key, known));
    }
    case 'required':
      return issue([...at, String(params.missingProperty)], 'value', 'required key is missing');
    case 'type':
      return issue(at, 'value', `must be ${phrase ?? typePhrase(parent)}${got(e.data)}`);
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
      return issue(at, 'value', `must be ${numberWord(parent)} ${String(params.comparison)} ${String(params.limit)}${got(e.data)}`);
    case 'pattern':
    case 'const':
    case 'enum':
    case 'format':
      return issue(at, 'value', `must be ${phrase ?? ajvText(e)}${got(e.data)}`);
    case 'minLength':
      return issue(at, 'value', params.limit === 1 ? `must not be empty${got(e.data)}` : `must be at least ${String(params.limit)} characters${got(e.data)}`);
    case 'maxLength':
      return issue(at, 'value', `must be at most ${String(params.limit)} characters${got(e.data)}`);
    case 'minItems':
      return issue(at, 'value', params.limit === 1 ? 'must not be an empty list' : `must have at least ${String(params.limit)} items`);
    case 'maxItems':
      return issue(at, 'value', `must have at most ${String(params.limit)} items`);
    case 'uniqueItems': {
      const later = Number(params.i);
      const earlier = Number(params.j);
      const list = Array.isArray(e.data) ? (e.data as unknown[]) : [];
      return issue([...at, later], 'value', `repeats ${describeValue(list[later])}, already listed at ${formatPath([...at, earlier])}`);
    }
    default:
      return issue(at, 'value', `${ajvText(e)}${'data' in e ? got(e.data) : ''}`);
  }
}

function ajvText(e: AjvError): string {
  return e.message ?? `fails ${e.keyword}`;
}

function unknownKeyMessage(key: string, known: readonly string[]): string {
  const suggestion = nearest(key, known);
  if (suggestion !== undefined) return `unknown key; did you mean ${JSON.stringify(suggestion)}?`;
  return known.length > 0 ? `unknown key; expected one of: ${known.join(', ')}` : 'unknown key';
}

/** The known key closest to `key`, if it is close enough to be a likely typo. */
export function nearest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const d = levenshtein(key.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  const allowed = Math.max(2, Math.floor(key.length / 3));
  return bestDistance <= allowed ? best : undefined;
}

/** Edit distance: insertions, deletions and substitutions each cost 1. */
export function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row.push(Math.min((prev[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost));
    }
    prev = row;
  }
  return prev[b.length] ?? 0;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
