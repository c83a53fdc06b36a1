/**
 * SPEC §9 as an operator meets it: real traffic through legate, then the
 * log lines read as JSON and `/metrics` read by a strict exposition parser;
 * credentials sent both ways searched for in everything the process printed.
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync, renameSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { ROOT, tempDir, waitFor, type InProcess } from '../helpers/legate.js';
import { parsePrometheusText, sampleValue, type MetricFamily } from '../helpers/prom.js';
import { testScope } from '../helpers/scope.js';
import { deadPort, echo, type Upstream, type UpstreamHandler } from '../helpers/upstream.js';

const scope = testScope();
const upstream = (handler: UpstreamHandler = echo): Promise<Upstream> => scope.upstream(handler);
const inProcess = (yaml: string): Promise<InProcess> => scope.app(yaml);
const cli = scope.cli;
/** util-linux's prlimit, which runs a command with resource limits (Debian has it in every install). */
const hasPrlimit = spawnSync('prlimit', ['--version']).status === 0;

async function scrape(adminPort: number): Promise<Map<string, MetricFamily>> {
  const r = await request({ port: adminPort, path: '/metrics' });
  expect(r.status).toBe(200);
  expect(r.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheusText(r.body);
}

/** Every counter sample of `after` is at least its value in `before` (counters never go down). */
function expectCountersNotDecreased(before: Map<string, MetricFamily>, after: Map<string, MetricFamily>): void {
  for (const f of before.values()) {
    if (f.type !== 'counter' && f.type !== 'histogram') continue;
    for (const s of f.samples) {
      if (f.type === 'histogram' && s.name.endsWith('_sum')) continue;
      const now = sampleValue(after, s.name, s.labels);
      expect(now, `${s.name}${JSON.stringify(s.labels)}`).toBeGreaterThanOrEqual(s.value);
    }
  }
}

/** An access line's own fields; pino adds `level`, `time` and `service`. */
const ACCESS_FIELDS = [
  'requestId',
  'method',
  'path',
  'route',
  'upstream',
  'status',
  'attempts',
  'durationMs',
  'upstreamMs',
  'bytesIn',
  'bytesOut',
  'error',
  'optOut',
  'optOutDenied',
  'tries',
  'msg',
].sort();

describe('access log and metrics after real traffic', () => {
  it('logs one line per request with its tries, honours the log opt-out, and counts it all in /metrics', async () => {
    const up = await upstream();
    const dead = await deadPort();
    const l = await inProcess(`routes:
  - name: api
    match: { pathPrefix: /api }
    upstream: ${up.url}
    optOut: [log]
  - name: dead
    match: { pathPrefix: /dead }
    upstream: http://127.0.0.1:${dead}
    retry: { retries: 1, backoff: { base: 1ms, max: 2ms } }
`);
    const before = await scrape(l.adminPort);
    const send = (path: string, id: string, extra: Partial<Parameters<typeof request>[0]> = {}) =>
      request({ port: l.proxyPort, path, ...extra, headers: { 'x-request-id': id, ...extra.headers } });

    expect((await send('/api/items?secret=q1', 'obs-get')).status).toBe(200);
    expect((await send('/api/items', 'obs-post', { method: 'POST', body: 'b'.repeat(1234) })).status).toBe(200);
    expect((await send('/api/quiet', 'obs-quiet', { headers: { 'x-legate-opt-out': 'log' } })).status).toBe(200);
    expect((await send('/dead/x', 'obs-dead')).status).toBe(502);
    const none = await send('/nowhere?token=t', 'obs-none', { method: 'PROPFIND' });
    expect(none.status).toBe(404);

    const line = (id: string) => waitFor(() => l.logs.lines.find((x) => x.requestId === id && x.msg === 'access'), `access line ${id}`);
    const get = await line('obs-get');
    expect(Object.keys(get).sort()).toEqual([...ACCESS_FIELDS, 'level', 'service', 'time'].sort());
    expect(get).toMatchObject({
      level: 'info',
      method: 'GET',
      path: '/api/items',
      route: 'api',
      upstream: `127.0.0.1:${up.port}`,
      status: 200,
      attempts: 1,
      bytesIn: 0,
      error: null,
      optOut: [],
      optOutDenied: [],
      tries: [{ endpoint: `127.0.0.1:${up.port}`, status: 200 }],
    });
    expect(get.durationMs as number).toBeGreaterThanOrEqual(get.upstreamMs as number);
    expect((get.tries as Array<{ ms: number }>)[0]?.ms).toBeGreaterThan(0);
    expect(await line('obs-post')).toMatchObject({ method: 'POST', status: 200, bytesIn: 1234 });
    const failed = await line('obs-dead');
    expect(failed).toMatchObject({ route: 'dead', status: 502, attempts: 2, error: 'upstream-connect-failure', upstream: `127.0.0.1:${dead}`, upstreamMs: null });
    expect(failed.tries).toEqual([
      expect.objectContaining({ endpoint: `127.0.0.1:${dead}`, error: 'upstream-connect-failure', retryReason: 'connect-failure' }),
      expect.objectContaining({ endpoint: `127.0.0.1:${dead}`, error: 'upstream-connect-failure' }),
    ]);
    expect(await line('obs-none')).toMatchObject({ method: 'PROPFIND', path: '/nowhere', route: null, status: 404, error: 'no-route', attempts: 0, tries: [], bytesIn: null, bytesOut: Buffer.byteLength(none.body) });
    // The opted-out request was served but is in no line; the ones after it were logged, so it is not merely late.
    expect(l.logs.lines.filter((x) => x.requestId === 'obs-quiet')).toEqual([]);
    expect(JSON.stringify(l.logs.lines)).not.toMatch(/secret=q1|token=t/);

    const after = await scrape(l.adminPort);
    const delta = (name: string, labels: Record<string, string>) => (sampleValue(after, name, labels) ?? 0) - (sampleValue(before, name, labels) ?? 0);
    expect(delta('legate_requests_total', { route: 'api', method: 'GET', status: '200' })).toBe(2);
    expect(delta('legate_requests_total', { route: 'api', method: 'POST', status: '200' })).toBe(1);
    expect(delta('legate_requests_total', { route: 'dead', method: 'GET', status: '502' })).toBe(1);
    expect(delta('legate_requests_total', { route: '', method: 'OTHER', status: '404' })).toBe(1);
    expect(delta('legate_upstream_tries_total', { route: 'api', outcome: '2xx' })).toBe(3);
    expect(delta('legate_upstream_tries_total', { route: 'dead', outcome: 'upstream-connect-failure' })).toBe(2);
    expect(delta('legate_retries_total', { route: 'dead', reason: 'connect-failure' })).toBe(1);
    expect(delta('legate_request_duration_seconds_count', { route: 'api' })).toBe(3);
    expect(delta('legate_upstream_duration_seconds_count', { route: 'dead' })).toBe(2);
    expect(sampleValue(after, 'legate_active_requests')).toBe(0);
    expect(sampleValue(after, 'legate_circuit_breaker_state', { route: 'dead', endpoint: `127.0.0.1:${dead}` })).toBe(0);
    expectCountersNotDecreased(before, after);
    // Label sets are exactly the documented ones, and no label holds a path, query or request host.
    const labelSets: Record<string, string[]> = {
      legate_requests_total: ['method', 'route', 'status'],
      legate_upstream_tries_total: ['outcome', 'route'],
      legate_retries_total: ['reason', 'route'],
      legate_request_duration_seconds_count: ['route'],
      legate_circuit_breaker_state: ['endpoint', 'route'],
    };
    for (const f of after.values()) {
      for (const s of f.samples) {
        const want = labelSets[s.name];
        if (want !== undefined) expect(Object.keys(s.labels).sort()).toEqual(want);
        for (const v of Object.values(s.labels)) expect(v).not.toMatch(/items|quiet|nowhere|secret|token|\//);
      }
    }
  });

  it('stops and resumes access lines when a reload sets logLevel to silent and back', async () => {
    // LOG_LEVEL, when set, overrides logLevel on reload as at start.
    const saved = process.env.LOG_LEVEL;
    delete process.env.LOG_LEVEL;
    try {
      const up = await upstream();
      const yaml = (level: string): string => `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nlogLevel: ${level}\nroutes:\n  - name: api\n    upstream: ${up.url}\n`;
      const legate = await inProcess(yaml('info'));
      let sent = 0;
      // Until legate has recorded the request (its access line, if any, is written at the same point).
      const send = async (id: string): Promise<void> => {
        expect((await request({ port: legate.proxyPort, path: '/x', headers: { 'x-request-id': id } })).status).toBe(200);
        sent += 1;
        await waitFor(async () => {
          const families = parsePrometheusText((await legate.app.observer.metrics()).body);
          return sampleValue(families, 'legate_requests_total', { route: 'api', method: 'GET', status: '200' }) === sent ? true : undefined;
        }, `request ${id} recorded`);
      };
      await send('a');
      expect((await legate.app.reloadText(yaml('silent'))).ok).toBe(true);
      await send('b');
      expect((await legate.app.reloadText(yaml('info'))).ok).toBe(true);
      await send('c');
      expect(legate.logs.lines.filter((l) => l.msg === 'access').map((l) => l.requestId)).toEqual(['a', 'c']);
    } finally {
      if (saved !== undefined) process.env.LOG_LEVEL = saved;
    }
  });
});

describe('the CLI', () => {
  it('prints only JSON lines, with no credential from either direction anywhere in its output', async () => {
    const secrets = ['AUTH-SECRET-1', 'COOKIE-SECRET-2', 'PROXY-SECRET-3', 'SETCOOKIE-SECRET-4'];
    const up = await upstream((req, res) => {
      res.setHeader('set-cookie', `session=${secrets[3]}; HttpOnly`);
      echo(req, res, Buffer.alloc(0), 0);
    });
    const dead = await deadPort();
    const p = await cli(`listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: api
    match: { pathPrefix: /api }
    upstream: ${up.url}
  - name: dead
    match: { pathPrefix: /dead }
    upstream: http://127.0.0.1:${dead}
    retry: { retries: 0 }
`);
    const headers = { authorization: `Bearer ${secrets[0]}`, cookie: `sid=${secrets[1]}`, 'proxy-authorization': `Basic ${secrets[2]}` };
    for (const [path, status] of [
      ['/api/a', 200],
      ['/dead/b', 502],
      ['/nowhere', 404],
    ] as const) {
      const r = await request({ port: p.proxyPort, path, headers: { ...headers, 'x-request-id': `cli-${status}` } });
      expect(r.status).toBe(status);
      // An upstream's Set-Cookie still reaches the app: it is only kept out of the logs.
      if (status === 200) expect(String(r.headers['set-cookie'])).toContain(secrets[3]);
    }
    for (const status of [200, 502, 404]) await p.waitForLine((l) => l.requestId === `cli-${status}` && l.msg === 'access', `access line ${status}`);
    const metrics = await scrape(p.adminPort);
    expect(sampleValue(metrics, 'legate_requests_total', { route: 'api', method: 'GET', status: '200' })).toBe(1);
    expect(metrics.get('legate_process_cpu_seconds_total')?.type).toBe('counter');

    expect(await p.stop('SIGTERM')).toBe(0);
    const all = p.stdout() + p.stderr();
    for (const s of secrets) expect(all).not.toContain(s);
    expect(p.lines.filter((l) => 'raw' in l)).toEqual([]);
    const access = p.lines.find((l) => l.requestId === 'cli-200') ?? {};
    expect(Object.keys(access).sort()).toEqual([...ACCESS_FIELDS, 'level', 'service', 'time'].sort());
    expect(access).toMatchObject({ level: 'info', route: 'api', status: 200, attempts: 1, upstream: `127.0.0.1:${up.port}` });
    expect(p.lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['legate started', 'drain started', 'drain finished; stopped']));
  });

  it('counts reloads applied and rejected, and logs the errors of a rejected one', async () => {
    const up = await upstream();
    const good = `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:\n  - name: api\n    upstream: ${up.url}\n`;
    const p = await cli(good);
    writeFileSync(p.configFile, good.replace('name: api', 'name: api\n    retry: { retries: three }'));
    p.child.kill('SIGHUP');
    const rejected = await p.waitForLine((l) => l.msg === 'config reload rejected; the previous config keeps serving', 'reload rejected');
    expect(JSON.stringify(rejected.errors)).toMatch(/retries/);
    await waitFor(async () => ((sampleValue(await scrape(p.adminPort), 'legate_config_reloads_total', { result: 'rejected' }) ?? 0) >= 1 ? true : undefined), 'rejected count');
    writeFileSync(p.configFile, good.replace('name: api', 'name: api2'));
    p.child.kill('SIGHUP');
    await p.waitForLine((l) => l.msg === 'config reload applied', 'reload applied');
    await waitFor(async () => ((sampleValue(await scrape(p.adminPort), 'legate_config_reloads_total', { result: 'applied' }) ?? 0) >= 1 ? true : undefined), 'applied count');
  });

  it('writes access lines to the file `accessLog` names, and only lifecycle lines to stdout', async () => {
    const up = await upstream();
    const dir = tempDir();
    const configFile = path.join(dir, 'routes.yaml');
    writeFileSync(configFile, `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccessLog: logs/access.log\nroutes:\n  - name: api\n    upstream: ${up.url}\n`);
    const p = await cli('', { configFile });
    for (let i = 0; i < 20; i++) expect((await request({ port: p.proxyPort, path: `/x/${i}`, headers: { 'x-request-id': `file-${i}` } })).status).toBe(200);
    expect(await p.stop('SIGTERM')).toBe(0);
    // Written out before exit: every line is there once the process is gone.
    const lines = readFileSync(path.join(dir, 'logs', 'access.log'), 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => l.requestId)).toEqual(Array.from({ length: 20 }, (_, i) => `file-${i}`));
    expect(lines[0]).toMatchObject({ msg: 'access', route: 'api', path: '/x/0', status: 200 });
    expect(p.lines.filter((l) => l.msg === 'access')).toEqual([]);
  });

  /** Until legate has recorded `n` GETs on route `api` (an access line is written at the same point). */
  const recorded = (adminPort: number, n: number): Promise<true> =>
    waitFor(async () => (sampleValue(await scrape(adminPort), 'legate_requests_total', { route: 'api', method: 'GET', status: '200' }) === n ? true : undefined), `${n} requests recorded`);

  /** The access lines of a file, by request id. */
  const idsIn = (file: string): string[] =>
    readFileSync(file, 'utf8')
      .trimEnd()
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => (JSON.parse(l) as { requestId: string }).requestId);

  it.each(['SIGUSR1', 'SIGHUP'] as const)('reopens the access log file on %s, after writing out the lines so far to the old one', async (signal) => {
    const up = await upstream();
    const dir = tempDir();
    const configFile = path.join(dir, 'routes.yaml');
    const file = path.join(dir, 'access.log');
    writeFileSync(configFile, `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccessLog: access.log\nroutes:\n  - name: api\n    upstream: ${up.url}\n`);
    const p = await cli('', { configFile });
    const send = async (id: string): Promise<void> => {
      expect((await request({ port: p.proxyPort, path: '/x', headers: { 'x-request-id': id } })).status).toBe(200);
    };
    await send('before-0');
    await send('before-1');
    // What logrotate does before it signals: the file is moved away, legate still has it open.
    renameSync(file, `${file}.1`);
    await send('moved-0');
    await recorded(p.adminPort, 3);
    p.child.kill(signal);
    await p.waitForLine((l) => l.msg === 'access log reopened', 'access log reopened');
    await send('after-0');
    await send('after-1');
    expect(await p.stop('SIGTERM')).toBe(0);
    expect(idsIn(`${file}.1`)).toEqual(['before-0', 'before-1', 'moved-0']);
    expect(idsIn(file)).toEqual(['after-0', 'after-1']);
    expect(p.lines.filter((l) => l.level === 'error' || l.level === 50)).toEqual([]);
  });

  it('keeps writing to the open file, and says so, when the access log cannot be reopened', async () => {
    const up = await upstream();
    const dir = tempDir();
    const logs = path.join(dir, 'logs');
    mkdirSync(logs);
    const configFile = path.join(dir, 'routes.yaml');
    writeFileSync(configFile, `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccessLog: logs/access.log\nroutes:\n  - name: api\n    upstream: ${up.url}\n`);
    const p = await cli('', { configFile });
    expect((await request({ port: p.proxyPort, path: '/x', headers: { 'x-request-id': 'first' } })).status).toBe(200);
    // The directory moved away whole: its name no longer leads anywhere.
    renameSync(logs, `${logs}.old`);
    p.child.kill('SIGUSR1');
    const failed = await p.waitForLine((l) => typeof l.msg === 'string' && l.msg.startsWith('access log not reopened'), 'the failed reopen');
    expect(failed).toMatchObject({ accessLog: path.join(logs, 'access.log'), err: expect.stringContaining('ENOENT') });
    expect((await request({ port: p.proxyPort, path: '/x', headers: { 'x-request-id': 'second' } })).status).toBe(200);
    expect(await p.stop('SIGTERM')).toBe(0);
    expect(idsIn(path.join(`${logs}.old`, 'access.log'))).toEqual(['first', 'second']);
  });

  it('switches the access log on reload, and rejects a reload whose access log cannot be opened', async () => {
    const up = await upstream();
    const dir = tempDir();
    const configFile = path.join(dir, 'routes.yaml');
    const config = (accessLog: string): string => `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccessLog: ${accessLog}\nroutes:\n  - name: api\n    upstream: ${up.url}\n`;
    writeFileSync(configFile, config('stdout'));
    writeFileSync(path.join(dir, 'not-a-directory'), '');
    const p = await cli('', { configFile });
    const send = async (id: string): Promise<void> => {
      expect((await request({ port: p.proxyPort, path: '/x', headers: { 'x-request-id': id } })).status).toBe(200);
    };
    await send('on-stdout');
    await recorded(p.adminPort, 1);
    writeFileSync(configFile, config('switched.log'));
    p.child.kill('SIGHUP');
    await p.waitForLine((l) => l.msg === 'access log switched', 'access log switched');
    await send('in-file');
    writeFileSync(configFile, config('not-a-directory/access.log'));
    p.child.kill('SIGHUP');
    const rejected = await p.waitForLine((l) => l.msg === 'config reload rejected; the previous config keeps serving', 'reload rejected');
    expect(JSON.stringify(rejected.errors)).toContain('not-a-directory');
    await send('still-in-file');
    expect(await p.stop('SIGTERM')).toBe(0);
    expect(p.lines.filter((l) => l.msg === 'access').map((l) => l.requestId)).toEqual(['on-stdout']);
    expect(idsIn(path.join(dir, 'switched.log'))).toEqual(['in-file', 'still-in-file']);
    expect(p.lines.some((l) => typeof l.msg === 'string' && l.msg.includes('takes effect on restart'))).toBe(false);
  });

  // prlimit caps the size of any file legate writes: past it a write fails with EFBIG, as on a full disk.
  it.runIf(hasPrlimit)('keeps serving when the access log file refuses writes, says so once, and writes again once it can', async () => {
    const up = await upstream();
    const dir = tempDir();
    const configFile = path.join(dir, 'routes.yaml');
    const file = path.join(dir, 'access.log');
    writeFileSync(configFile, `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccessLog: access.log\nroutes:\n  - name: api\n    upstream: ${up.url}\n`);
    const p = await cli('', { configFile, wrap: ['prlimit', `--fsize=${64 * 1024}`, '--'] });
    const failure = (l: Record<string, unknown>) => typeof l.msg === 'string' && l.msg.startsWith('access log write failed');
    // Until the file is full (~220 lines): a batch goes out every ~8 KiB and at least every 250 ms.
    const failed = await waitFor(async () => {
      const sent = await Promise.all(Array.from({ length: 20 }, () => request({ port: p.proxyPort, path: '/before' })));
      expect(sent.map((r) => r.status)).toEqual(Array(20).fill(200));
      return p.lines.find(failure);
    }, 'the failed write reported', 20_000);
    expect(failed).toMatchObject({ level: 'error', accessLog: file, err: expect.stringContaining('EFBIG') });
    for (let i = 0; i < 20; i++) expect((await request({ port: p.proxyPort, path: `/during/${i}` })).status).toBe(200);
    // Made room, as logrotate's copytruncate does: the held lines and the new ones are written.
    truncateSync(file, 0);
    for (let i = 0; i < 5; i++) expect((await request({ port: p.proxyPort, path: '/after', headers: { 'x-request-id': `after-${i}` } })).status).toBe(200);
    await p.waitForLine((l) => l.msg === 'access log writes succeed again', 'writes succeed again');
    expect(await p.stop('SIGTERM')).toBe(0);
    expect(p.lines.filter(failure)).toHaveLength(1);
    const written = readFileSync(file, 'utf8')
      .split('\n')
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as { requestId: string; path: string }];
        } catch {
          return []; // the rest of the line cut at the limit
        }
      });
    expect(written.filter((l) => l.path.startsWith('/during/')).length).toBe(20);
    expect(written.filter((l) => l.path === '/after').map((l) => l.requestId)).toEqual(['after-0', 'after-1', 'after-2', 'after-3', 'after-4']);
  });
});

describe('stdout that takes no writes', () => {
  it('holds log lines up to a bound, drops the rest in order, and says how many once stdout reads again', async () => {
    // legate's own logger in a process of its own, its stdout a real pipe this test does not read at
    // first: a log collector that stopped. 20,000 lines (~1.3 MB) against a 64 KiB bound.
    const logger = pathToFileURL(path.join(ROOT, 'dist/observability/logger.js')).href;
    const code = `
      import { createLogger } from ${JSON.stringify(logger)};
      const logger = createLogger({ level: 'info', pretty: false, heldLimit: 64 * 1024 });
      for (let i = 0; i < 20000; i++) logger.info({ i }, 'filler');
      process.stderr.write('logged\\n');
      process.stdin.resume();
      process.stdin.on('end', () => process.exit(0));
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['pipe', 'pipe', 'pipe'] });
    scope.defer(() => Promise.resolve(child.kill('SIGKILL')));
    child.stdout.pause();
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    await waitFor(() => (err.includes('logged') ? true : undefined), 'the child to log its lines', 10_000);
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stdout.resume();
    await waitFor(() => (out.includes('"droppedLines"') ? true : undefined), 'the line saying what was dropped', 10_000);
    child.stdin.end();
    await once(child, 'exit');
    const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; i?: number; droppedLines?: number; level: string });
    const filler = lines.filter((l) => l.msg === 'filler');
    const report = lines.find((l) => l.droppedLines !== undefined);
    expect(filler.length).toBeGreaterThan(0);
    expect(filler.length).toBeLessThan(20_000);
    // The first lines are kept, whole and in order; the later ones are the ones dropped, and counted.
    expect(filler.every((l, n) => l.i === n)).toBe(true);
    expect(report).toMatchObject({ level: 'warn', heldLimit: 64 * 1024 });
    expect(filler.length + (report?.droppedLines ?? 0)).toBe(20_000);
  });
});
