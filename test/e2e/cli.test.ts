/**
 * The real CLI as a subprocess: help, version, validate, explain, serving,
 * and hot reload in each of the ways a config file changes in real life.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { CLI, ROOT, tempDir, waitFor, type CliProcess } from '../helpers/legate.js';
import { testScope } from '../helpers/scope.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const run = promisify(execFile);

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 10_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const scope = testScope();
/** An upstream that answers every request with `tag`, so a test sees which one served it. */
const upstream = (tag: string): Promise<Upstream> =>
  scope.upstream((_req, res) => {
    res.end(tag);
  });
const legate = (yaml: string, configFile?: string): Promise<CliProcess> => scope.cli(yaml, configFile === undefined ? {} : { configFile });
const header = 'listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n';

/** A CLI run's stdout as the JSON lines it printed. */
function stdoutLines(stdout: string): Array<{ level: string; msg: string; err: string }> {
  return stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { level: string; msg: string; err: string });
}
const routeTo = (u: Upstream, name = 'r') => `${header}routes:\n  - name: ${name}\n    upstream: ${u.url}\n    retry: { retries: 0 }\n`;

describe('legate CLI', () => {
  it('prints help and version', async () => {
    const help = await cli('--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/legate validate \[FILE\]/);
    const version = await cli('--version');
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(version.stdout.trim()).toBe(`legate ${pkg.version}`);
    expect((await cli('frobnicate')).code).toBe(2);
  });

  it('validates the shipped routes.yaml', async () => {
    const r = await cli('validate', 'routes.yaml');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/routes\.yaml: valid, \d+ routes?/);
  });

  it('reports every error of a bad file at once, as file:line:col key.path: message, and exits 1', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'routes.yaml');
    writeFileSync(
      file,
      ['routes:', '  - name: a', '    upstream: http://x', '    retry:', '      retries: three', '  - name: b', '    upstream: http://y', '    timout: 2s', ''].join('\n'),
    );
    const r = await cli('validate', file);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toContain(`${file}:5:16 routes[0].retry.retries: must be an integer >= 0, got "three"`);
    expect(lines.some((l) => l.startsWith(`${file}:8:5 routes[1].timout: unknown key; did you mean "timeout"?`))).toBe(true);
  });

  it('says when the access log could not be opened, as a start would find it, and creates nothing', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'routes.yaml');
    mkdirSync(path.join(dir, 'a-directory'));
    symlinkSync(path.join(dir, 'gone'), path.join(dir, 'logs'));
    writeFileSync(path.join(dir, 'a-file'), 'x');
    const withLog = (accessLog: string): string => `accessLog: ${accessLog}\nroutes:\n  - name: a\n    upstream: http://127.0.0.1:9\n`;
    // [accessLog, what validate says, what the start that fails on it says]
    const cases: [string, string, string][] = [
      ['./a-directory', `${path.join(dir, 'a-directory')} is a directory`, `EISDIR: illegal operation on a directory, open '${path.join(dir, 'a-directory')}'`],
      ['./logs/access.log', `${path.join(dir, 'logs')} is a symbolic link to ${path.join(dir, 'gone')}, which does not exist`, 'which does not exist'],
      ['./a-file/access.log', `${path.join(dir, 'a-file')} is not a directory`, 'ENOTDIR: not a directory'],
    ];
    for (const [accessLog, problem, atStart] of cases) {
      writeFileSync(file, withLog(accessLog));
      const r = await cli('validate', file);
      expect(r.code, accessLog).toBe(1);
      expect(r.stderr).toContain(`${file}:1:12 accessLog: cannot be opened for appending: ${problem}`);
      const started = await cli('--config', file);
      expect(started.code, accessLog).toBe(1);
      expect(started.stdout + started.stderr).toContain(atStart);
    }
    // A file that does not exist yet, in directories that do not either, is fine: a start makes them.
    writeFileSync(file, withLog('./new/deeper/access.log'));
    const r = await cli('validate', file);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(existsSync(path.join(dir, 'new'))).toBe(false);
  });

  it('explains which route takes a request, where it goes and its policy — or why no route does', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'routes.yaml');
    writeFileSync(
      file,
      `routes:\n  - name: payments\n    match: { pathPrefix: /payments }\n    stripPrefix: true\n    upstream: https://payments.internal:8443/api\n    retry: { retries: 3 }\n`,
    );
    const hit = await cli('explain', '--config', file, 'GET', 'http://localhost:15001/payments/charge?x=1');
    expect(hit.code).toBe(0);
    expect(hit.stdout).toContain('route payments');
    expect(hit.stdout).toContain('https://payments.internal:8443/api/charge?x=1');
    expect(hit.stdout).toMatch(/retry: +3 retries/);
    const tuned = await cli('explain', '--config', file, 'GET', '/payments/x', '-H', 'x-legate-max-retries: 9', '-H', 'x-legate-opt-out: retry');
    expect(tuned.stdout).toMatch(/this request: +5 retries .*opt-out denied: retry/);
    const bad = await cli('explain', '--config', file, 'GET', '/payments/x', '-H', 'x-legate-timeout-ms: soon');
    expect(bad.stdout).toMatch(/400 bad-control-header: x-legate-timeout-ms/);
    const miss = await cli('explain', '--config', file, 'GET', 'http://evil.example/x');
    expect(miss.code).toBe(1);
    expect(miss.stdout).toContain('404 no-route');
    expect(miss.stdout).toContain('payments: names no host');
  });

  it('serves through the real CLI, origin-form and as an HTTP_PROXY for a named host', async () => {
    const up = await upstream('hello');
    const p = await legate(`${header}routes:\n  - name: ext\n    match: { host: api.partner.test }\n    upstream: ${up.url}\n`);
    const viaProxy = await request({ port: p.proxyPort, path: 'http://api.partner.test/v1/x' });
    expect(viaProxy.body).toBe('hello');
    // A real HTTP_PROXY client, where the machine has one. Async: the upstream lives in this process.
    const curl = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://api.partner.test/v1/x'], {
      env: { ...process.env, http_proxy: `http://127.0.0.1:${p.proxyPort}`, no_proxy: '' },
    }).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
    if (curl !== undefined) expect(curl.stdout).toBe('200');
    expect((await request({ port: p.proxyPort, path: 'http://unknown.test/' })).status).toBe(404);
  });

  it('refuses to start on an invalid file, naming the errors', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'routes.yaml');
    writeFileSync(file, 'routes:\n  - name: BAD NAME\n    upstream: nope\n');
    const r = await cli('--config', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/routes\[0\]\.name/);
    expect(r.stderr).toMatch(/routes\[0\]\.upstream/);
  });

  it('refuses to start on a port something else holds, naming the address and why', async () => {
    const squatter = net.createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    try {
      const taken = (squatter.address() as net.AddressInfo).port;
      const file = path.join(tempDir(), 'routes.yaml');
      writeFileSync(file, `listen: 127.0.0.1:${taken}\nadmin: 127.0.0.1:0\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:9\n`);
      const r = await cli('--config', file);
      expect(r.code).toBe(1);
      const fatal = stdoutLines(r.stdout);
      expect(fatal).toEqual([expect.objectContaining({ level: 'fatal', msg: 'legate could not start', err: `cannot listen on 127.0.0.1:${taken}: EADDRINUSE` })]);
    } finally {
      await new Promise((r) => squatter.close(r));
    }
  });

  // Under /proc a parent exists but takes no child: Node's recursive mkdir spins there for ever.
  const unopenable: Array<[string, (dir: string) => string, RegExp]> = [
    ['under a regular file', (dir) => path.join(dir, 'routes.yaml', 'logs', 'access.log'), /ENOTDIR/],
    ...(process.platform === 'linux' ? [['under /proc', () => '/proc/legate-test/access.log', /ENOENT/] as [string, (dir: string) => string, RegExp]] : []),
  ];
  it.each(unopenable)('refuses to start when the access log file cannot be opened (%s), naming it and why', async (_case, where, cause) => {
    const dir = tempDir();
    const file = path.join(dir, 'routes.yaml');
    const accessLog = where(dir);
    writeFileSync(file, `${header}accessLog: ${accessLog}\nroutes:\n  - name: r\n    upstream: http://127.0.0.1:9\n`);
    const r = await cli('--config', file);
    expect(r.code).toBe(1);
    const fatal = stdoutLines(r.stdout);
    expect(fatal).toEqual([expect.objectContaining({ level: 'fatal', msg: 'legate could not start' })]);
    expect(fatal[0]?.err).toContain(`accessLog: cannot open ${accessLog}: `);
    expect(fatal[0]?.err).toMatch(cause);
  });
});

describe('hot reload', () => {
  const served = (p: CliProcess) => request({ port: p.proxyPort, path: '/' }).then((r) => r.body);
  const until = (p: CliProcess, body: string) => waitFor(async () => ((await served(p)) === body ? true : undefined), `legate to serve "${body}"`);

  it('applies an edit in place, rejects a broken edit and keeps serving, then applies a fix', async () => {
    const a = await upstream('A');
    const b = await upstream('B');
    const p = await legate(routeTo(a));
    expect(await served(p)).toBe('A');
    writeFileSync(p.configFile, routeTo(b));
    await until(p, 'B');
    writeFileSync(p.configFile, `${routeTo(a)}    retry: { retries: -1 }\n`);
    const rejected = await p.waitForLine((l) => l.msg === 'config reload rejected; the previous config keeps serving', 'reload rejected');
    expect(JSON.stringify(rejected.errors)).toMatch(/routes\[0\]/);
    expect(await served(p)).toBe('B');
    writeFileSync(p.configFile, routeTo(a));
    await until(p, 'A');
  });

  it('follows a file replaced by rename, as editors save', async () => {
    const a = await upstream('A');
    const b = await upstream('B');
    const p = await legate(routeTo(a));
    const tmp = `${p.configFile}.swp`;
    writeFileSync(tmp, routeTo(b));
    renameSync(tmp, p.configFile);
    await until(p, 'B');
  });

  it('follows a Kubernetes ConfigMap ..data symlink swap', async () => {
    const a = await upstream('A');
    const b = await upstream('B');
    const dir = tempDir();
    mkdirSync(path.join(dir, '..2026_11_23_v1'));
    writeFileSync(path.join(dir, '..2026_11_23_v1', 'routes.yaml'), routeTo(a));
    symlinkSync('..2026_11_23_v1', path.join(dir, '..data'));
    symlinkSync('..data/routes.yaml', path.join(dir, 'routes.yaml'));
    const p = await legate('', path.join(dir, 'routes.yaml'));
    expect(await served(p)).toBe('A');
    mkdirSync(path.join(dir, '..2026_11_23_v2'));
    writeFileSync(path.join(dir, '..2026_11_23_v2', 'routes.yaml'), routeTo(b));
    symlinkSync('..2026_11_23_v2', path.join(dir, '..data_tmp'));
    renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
    await until(p, 'B');
  });

  it('reloads on SIGHUP', async () => {
    const a = await upstream('A');
    const p = await legate(routeTo(a));
    const before = p.lines.filter((l) => l.msg === 'config reload applied').length;
    p.child.kill('SIGHUP');
    await p.waitForLine((l) => l.msg === 'SIGHUP: reloading config', 'SIGHUP line');
    await waitFor(() => (p.lines.filter((l) => l.msg === 'config reload applied').length > before ? true : undefined), 'reload applied after SIGHUP');
  });

  it('lets a request in flight finish on the old config while new requests use the new one', async () => {
    let release: (() => void) | undefined;
    const slow = await startUpstream((_req, res) => {
      release = () => res.end('old');
    });
    scope.defer(() => slow.close());
    const b = await upstream('new');
    const p = await legate(`${header}routes:\n  - name: r\n    upstream: ${slow.url}\n    retry: { retries: 0 }\n`);
    const inFlight = served(p);
    await waitFor(() => release, 'the slow upstream to hold the request');
    writeFileSync(p.configFile, routeTo(b));
    // Not polled with requests: one sent before the swap would be held by the slow upstream.
    await p.waitForLine((l) => l.msg === 'config reload applied', 'reload applied');
    expect(await served(p)).toBe('new');
    release?.();
    expect(await inFlight).toBe('old');
  });
});
