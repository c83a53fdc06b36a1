/**
 * Header rules and the values they inject: template parsing, load-time
 * problems, rotation of value files (watched folders, digest compare), and
 * what the rules do to request and response headers. No value may ever
 * appear in a log line or an error message.
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { CompiledHeaderRules, isProtectedHeader } from '../../src/layers/header-rules.js';
import type { LegateError } from '../../src/errors.js';
import { parseTemplate, SecretValues, templateProblem } from '../../src/runtime/secret-values.js';
import { LogSink, tempDir, waitFor } from '../helpers/legate.js';

const disposers: Array<() => void> = [];
afterEach(() => {
  while (disposers.length > 0) disposers.pop()?.();
});

function sinkLogger(): { logs: LogSink; logger: pino.Logger } {
  const logs = new LogSink();
  return { logs, logger: pino({ level: 'debug' }, logs) };
}

describe('templates', () => {
  it('splits text, ${env:..} and ${file:..}; anything else stays text', () => {
    expect(parseTemplate('Bearer ${env:TOKEN}!')).toEqual([
      { kind: 'text', text: 'Bearer ' },
      { kind: 'env', name: 'TOKEN' },
      { kind: 'text', text: '!' },
    ]);
    expect(parseTemplate('${file:/a/b}${env:X}')).toEqual([
      { kind: 'file', path: '/a/b' },
      { kind: 'env', name: 'X' },
    ]);
    expect(parseTemplate('$5 ${other:x} {env:Y}')).toEqual([{ kind: 'text', text: '$5 ${other:x} {env:Y}' }]);
  });

  it('reports what a config load must reject, naming the variable or file and never a value', () => {
    const dir = tempDir();
    const file = path.join(dir, 'token');
    writeFileSync(file, 's3cret-value\n');
    expect(templateProblem('Bearer ${env:LEGATE_T}', { LEGATE_T: 'v' })).toBeUndefined();
    expect(templateProblem(`Bearer \${file:${file}}`, {})).toBeUndefined();
    expect(templateProblem('Bearer ${env:LEGATE_MISSING}', {})).toBe('environment variable LEGATE_MISSING is not set');
    expect(templateProblem(`\${file:${dir}/absent}`, {})).toBe(`cannot read ${dir}/absent (ENOENT)`);
    expect(templateProblem('${env:}', {})).toMatch(/empty/);
    writeFileSync(file, 'two\nlines');
    const problem = templateProblem(`\${file:${file}}`, {});
    expect(problem).toMatch(/line break/);
    expect(problem).not.toMatch(/two|lines/);
    expect(templateProblem('${env:BAD}', { BAD: 'a\r\nb' })).toMatch(/cannot carry/);
  });
});

describe('SecretValues', () => {
  it('renders env and file values, the file trimmed of its trailing newline', () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'token'), 'tok-1\n');
    const v = new SecretValues({ env: { USER_NAME: 'svc' } });
    disposers.push(() => v.dispose());
    const r = v.compile(`\${env:USER_NAME}:\${file:${dir}/token}`);
    expect(r.value()).toBe('svc:tok-1');
    expect(r.problem()).toBeUndefined();
  });

  it('uses a rotated file from the next read on: rewritten in place, then replaced by rename', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'token');
    writeFileSync(file, 'rot-1');
    const { logs, logger } = sinkLogger();
    const v = new SecretValues({ logger, debounceMs: 10, pollMs: 0 });
    disposers.push(() => v.dispose());
    const r = v.compile(`Bearer \${file:${file}}`);
    expect(r.value()).toBe('Bearer rot-1');
    expect(v.watching).toBe(true);
    writeFileSync(file, 'rot-2\n');
    await waitFor(() => (r.value() === 'Bearer rot-2' ? true : undefined), 'the rewritten file to be read');
    writeFileSync(path.join(dir, '.next'), 'rot-3');
    renameSync(path.join(dir, '.next'), file);
    await waitFor(() => (r.value() === 'Bearer rot-3' ? true : undefined), 'the renamed file to be read');
    expect(logs.lines.some((l) => l.msg === 'header value file changed; the new value is used from the next request' && l.file === file)).toBe(true);
    expect(JSON.stringify(logs.lines)).not.toMatch(/rot-\d/);
  });

  it('keeps the last value while the file is missing mid-rotation, and says so without the value', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'token');
    writeFileSync(file, 'keep-me');
    const { logs, logger } = sinkLogger();
    const v = new SecretValues({ logger, debounceMs: 10, pollMs: 0 });
    disposers.push(() => v.dispose());
    const r = v.compile(`\${file:${file}}`);
    rmSync(file);
    v.check();
    expect(r.value()).toBe('keep-me');
    const warning = logs.lines.find((l) => l.msg === 'header value file cannot be read; the last value read keeps being used');
    expect(warning?.file).toBe(file);
    writeFileSync(file, 'fresh');
    v.check();
    expect(r.value()).toBe('fresh');
    expect(JSON.stringify(logs.lines)).not.toMatch(/keep-me|fresh/);
  });

  it('has no value, and a problem that names the file, when the file was never readable; picks it up once it appears', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'later');
    const { logs, logger } = sinkLogger();
    const v = new SecretValues({ logger, debounceMs: 10, pollMs: 0 });
    disposers.push(() => v.dispose());
    const r = v.compile(`\${file:${file}}`);
    expect(r.value()).toBeUndefined();
    expect(r.problem()).toBe(`cannot read ${file} (ENOENT)`);
    expect(logs.lines.some((l) => l.level === 50 && l.problem === `cannot read ${file} (ENOENT)`)).toBe(true);
    writeFileSync(file, 'arrived');
    await waitFor(() => (r.value() === 'arrived' ? true : undefined), 'the new file to be read');
  });

  it('closes its watcher on dispose', () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 't'), 'x');
    const v = new SecretValues({ pollMs: 1_000 });
    v.compile(`\${file:${dir}/t}`);
    expect(v.watching).toBe(true);
    v.dispose();
    expect(v.watching).toBe(false);
  });

  it('opens no watcher for templates without files', () => {
    const v = new SecretValues({ env: { A: 'a' } });
    v.compile('${env:A}');
    expect(v.watching).toBe(false);
    v.dispose();
  });
});

describe('CompiledHeaderRules', () => {
  const rules = (set: Array<[string, string]>, remove: string[] = [], response: { set?: Array<[string, string]>; remove?: string[] } = {}) => ({
    request: { set, remove },
    response: { set: response.set ?? [], remove: response.remove ?? [] },
  });

  it('replaces an app-sent header of the same name and removes after setting', () => {
    const c = new CompiledHeaderRules('r', rules([['authorization', 'Bearer fixed'], ['x-both', 'v']], ['x-debug', 'x-both']));
    disposers.push(() => c.dispose());
    const headers: Record<string, string | string[] | undefined> = { authorization: 'Basic app-secret', 'x-debug': '1', accept: '*/*' };
    c.applyToRequest(headers);
    expect(headers).toEqual({ authorization: 'Bearer fixed', accept: '*/*' });
  });

  it('applies response rules to a copy of the upstream headers', () => {
    const c = new CompiledHeaderRules('r', rules([], [], { set: [['x-served-by', 'legate']], remove: ['server'] }));
    disposers.push(() => c.dispose());
    const upstream = { server: 'nginx/1.2', 'content-type': 'text/plain' };
    expect(c.applyToResponse(upstream)).toEqual({ 'content-type': 'text/plain', 'x-served-by': 'legate' });
    expect(upstream.server).toBe('nginx/1.2');
  });

  it('ignores rules on hop-by-hop, framing and host headers, with a warning', () => {
    const { logs, logger } = sinkLogger();
    const c = new CompiledHeaderRules('r', rules([['connection', 'close'], ['transfer-encoding', 'chunked'], ['proxy-foo', 'x'], ['x-ok', '1']], ['host']), { logger });
    disposers.push(() => c.dispose());
    expect(c.request.set.map((s) => s.name)).toEqual(['x-ok']);
    expect(c.request.remove).toEqual([]);
    const warned = logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('header rule ignored')).map((l) => l.header);
    expect(warned).toEqual(['connection', 'transfer-encoding', 'proxy-foo', 'host']);
    expect(['keep-alive', 'TE', 'Upgrade', 'content-length', 'proxy-authorization'].every(isProtectedHeader)).toBe(true);
    expect(isProtectedHeader('authorization')).toBe(false);
  });

  it('fails the request with internal-error naming the header and file, never a value, while a value cannot be rendered', () => {
    const dir = tempDir();
    const c = new CompiledHeaderRules('billing', rules([['authorization', `Bearer \${file:${dir}/missing}`]]));
    disposers.push(() => c.dispose());
    let err: LegateError | undefined;
    try {
      c.applyToRequest({});
    } catch (e) {
      err = e as LegateError;
    }
    expect(err?.code).toBe('internal-error');
    expect(err?.message).toBe(`header rule for authorization on route billing has no value: cannot read ${dir}/missing (ENOENT)`);
  });
});
