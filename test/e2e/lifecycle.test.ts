/**
 * SPEC §10 through the real CLI: readiness, and what SIGTERM/SIGINT do with
 * a slow request in flight — readiness 503, new connections refused, the
 * request finishing, keep-alive connections closed, logs written out, exit
 * 0 — plus the drain timeout and the second signal that exits at once.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { startApp, startCli, waitFor, type CliProcess } from '../helpers/legate.js';
import { freePort, startUpstream, type Upstream } from '../helpers/upstream.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** An upstream that answers `/slow` only when the test calls `release()`, and anything else at once. */
async function slowUpstream(): Promise<Upstream & { release(): void }> {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const u = await startUpstream(async (req, res) => {
    if (req.url?.startsWith('/slow') === true) await released;
    res.end(`done ${req.url ?? ''}`);
  });
  cleanups.push(async () => {
    release();
    await u.close();
  });
  return { ...u, release };
}

async function cli(yaml: string): Promise<CliProcess> {
  const p = await startCli(`listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n${yaml}`);
  cleanups.push(() => p.stop('SIGKILL'));
  return p;
}

interface KeptAliveReply {
  status: number;
  body: string;
  socket: net.Socket;
}

/** A GET over a keep-alive agent, so the connection outlives the response; `error` when it failed. */
function keepAliveGet(agent: http.Agent, port: number, path: string): Promise<KeptAliveReply | { error: string }> {
  return new Promise((resolve) => {
    let socket: net.Socket | undefined;
    const req = http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, socket: socket as net.Socket }));
      res.on('error', (e) => resolve({ error: e.message }));
    });
    req.on('socket', (s: net.Socket) => (socket = s));
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
  });
}

function connectError(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(undefined);
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code));
  });
}

const closed = (s: net.Socket): Promise<void> => (s.destroyed ? Promise.resolve() : new Promise((r) => s.once('close', () => r())));

describe('graceful drain', () => {
  it('on SIGTERM: readiness 503, no new connections, the slow request finishes, keep-alive connections close, logs written, exit 0', async () => {
    const up = await slowUpstream();
    const p = await cli(`drainTimeout: 20s\nroutes:\n  - name: api\n    upstream: ${up.url}\n`);
    // Two pools, or the slow request would reuse the idle connection.
    const idleAgent = new http.Agent({ keepAlive: true });
    const busyAgent = new http.Agent({ keepAlive: true });
    cleanups.push(async () => {
      idleAgent.destroy();
      busyAgent.destroy();
    });
    expect((await request({ port: p.adminPort, path: '/readyz' })).status).toBe(200);

    // One connection left idle by a finished request, one busy with the slow request.
    const quick = await keepAliveGet(idleAgent, p.proxyPort, '/quick');
    if ('error' in quick) throw new Error(quick.error);
    expect(quick.status).toBe(200);
    const slow = keepAliveGet(busyAgent, p.proxyPort, '/slow');
    await waitFor(() => (up.seen.some((r) => r.url === '/slow') ? true : undefined), 'the slow request upstream');

    p.child.kill('SIGTERM');
    await p.waitForLine((l) => l.msg === 'drain started', 'drain started');
    const ready = await request({ port: p.adminPort, path: '/readyz' });
    expect([ready.status, ready.body]).toEqual([503, 'draining\n']);
    expect(await connectError(p.proxyPort)).toBe('ECONNREFUSED');
    await closed(quick.socket);
    expect(p.child.exitCode).toBeNull();

    up.release();
    const done = await slow;
    if ('error' in done) throw new Error(done.error);
    expect([done.status, done.body]).toEqual([200, 'done /slow']);
    // Closed by legate right after the response, not left for the keep-alive timeout.
    await closed(done.socket);
    expect(await p.exited).toBe(0);

    const msgs = p.lines.map((l) => (l.msg === 'access' ? `access ${String(l.path)} ${String(l.status)}` : String(l.msg)));
    const at = (m: string) => msgs.indexOf(m);
    expect(p.lines.find((l) => l.msg === 'drain started')).toMatchObject({ active: 1, drainTimeoutMs: 20_000 });
    expect(at('access /slow 200')).toBeGreaterThan(at('drain started'));
    expect(at('drain finished; stopped')).toBeGreaterThan(at('access /slow 200'));
    expect(msgs[msgs.length - 1]).toBe('drain finished; stopped');
    expect(p.lines.find((l) => l.msg === 'drain finished; stopped')).toMatchObject({ unfinished: 0 });
  });

  it('closes what is still running when drainTimeout passes, logs it, and still exits 0', async () => {
    const up = await slowUpstream();
    const p = await cli(`drainTimeout: 300ms\nroutes:\n  - name: api\n    upstream: ${up.url}\n    retry: { retries: 0 }\n`);
    const agent = new http.Agent({ keepAlive: true });
    cleanups.push(async () => agent.destroy());
    const slow = keepAliveGet(agent, p.proxyPort, '/slow');
    await waitFor(() => (up.seen.length > 0 ? true : undefined), 'the slow request upstream');
    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
    expect(await slow).toHaveProperty('error');
    expect(p.lines.find((l) => l.msg === 'drain timeout passed: closing the connections of unfinished requests')).toMatchObject({ unfinished: 1 });
    expect(p.lines.find((l) => l.msg === 'drain finished; stopped')).toMatchObject({ unfinished: 1 });
    // The cut request is still accounted for in the access log, before the process ended.
    expect(p.lines.find((l) => l.msg === 'access' && l.path === '/slow')).toMatchObject({ route: 'api', attempts: 1 });
  });

  it('exits at once on a second signal, saying so, without waiting for requests in flight', async () => {
    const up = await slowUpstream();
    const p = await cli(`drainTimeout: 60s\nroutes:\n  - name: api\n    upstream: ${up.url}\n`);
    const slow = request({ port: p.proxyPort, path: '/slow' }).catch((e: Error) => e);
    await waitFor(() => (up.seen.length > 0 ? true : undefined), 'the slow request upstream');
    p.child.kill('SIGTERM');
    await p.waitForLine((l) => l.msg === 'drain started', 'drain started');
    const sent = Date.now();
    p.child.kill('SIGTERM');
    // 128 + SIGTERM, as a shell reports a process the signal ended.
    expect(await p.exited).toBe(143);
    expect(Date.now() - sent).toBeLessThan(5_000);
    expect(p.lines.some((l) => l.msg === 'second signal: exiting now, without waiting for requests in flight')).toBe(true);
    expect(await slow).toBeInstanceOf(Error);
  });

  it('drains on SIGINT too, and is ready only once it listens', async () => {
    const up = await slowUpstream();
    const p = await cli(`routes:\n  - name: api\n    upstream: ${up.url}\n`);
    // startCli returns after the start line, which is written once the listeners are up.
    expect((await request({ port: p.adminPort, path: '/readyz' })).status).toBe(200);
    expect((await request({ port: p.adminPort, path: '/healthz' })).status).toBe(200);
    p.child.kill('SIGINT');
    expect(await p.exited).toBe(0);
    expect(p.lines.find((l) => l.msg === 'signal received: draining (send it again to exit at once)')).toMatchObject({ signal: 'SIGINT' });
  });
});

describe('listen and admin changed by a reload', () => {
  it('binds the new addresses, lets a request in flight on the old one finish and closes its connections; a taken port rejects the reload', async () => {
    const up = await slowUpstream();
    const p = await cli(`routes:\n  - name: api\n    upstream: ${up.url}\n`);
    const [newProxy, newAdmin] = [await freePort(), await freePort()];
    const agent = new http.Agent({ keepAlive: true });
    cleanups.push(async () => agent.destroy());
    // One request in flight on the old proxy address while the reload moves it.
    const slow = keepAliveGet(agent, p.proxyPort, '/slow');
    await waitFor(() => (up.seen.some((r) => r.url === '/slow') ? true : undefined), 'the slow request upstream');

    const text = readFileSync(p.configFile, 'utf8');
    writeFileSync(p.configFile, text.replace('listen: 127.0.0.1:0', `listen: 127.0.0.1:${newProxy}`).replace('admin: 127.0.0.1:0', `admin: 127.0.0.1:${newAdmin}`));
    p.child.kill('SIGHUP');
    await p.waitForLine((l) => l.msg === `proxy listener moved to 127.0.0.1:${newProxy}`, 'proxy listener moved');
    await p.waitForLine((l) => l.msg === `admin listener moved to 127.0.0.1:${newAdmin}`, 'admin listener moved');
    expect(p.lines.some((l) => typeof l.msg === 'string' && l.msg.includes('takes effect on restart'))).toBe(false);

    expect((await request({ port: newProxy, path: '/quick' })).status).toBe(200);
    expect((await request({ port: newAdmin, path: '/readyz' })).status).toBe(200);
    expect(await connectError(p.proxyPort)).toBe('ECONNREFUSED');
    expect(await connectError(p.adminPort)).toBe('ECONNREFUSED');
    up.release();
    const done = await slow;
    if ('error' in done) throw new Error(done.error);
    expect([done.status, done.body]).toEqual([200, 'done /slow']);
    // Its connection closed by legate right after the response, not kept alive on an address given up.
    await closed(done.socket);

    // A port something else holds: the reload is rejected and the addresses stay.
    const squatter = net.createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => squatter.close(r)));
    const taken = (squatter.address() as net.AddressInfo).port;
    writeFileSync(p.configFile, readFileSync(p.configFile, 'utf8').replace(`listen: 127.0.0.1:${newProxy}`, `listen: 127.0.0.1:${taken}`));
    p.child.kill('SIGHUP');
    const rejected = await p.waitForLine((l) => l.msg === 'config reload rejected; the previous config keeps serving', 'reload rejected');
    expect(JSON.stringify(rejected.errors)).toContain(`cannot listen on 127.0.0.1:${taken}: EADDRINUSE`);
    expect((await request({ port: newProxy, path: '/quick' })).status).toBe(200);
    expect(await p.stop('SIGTERM')).toBe(0);
  });

  it('swaps the proxy listener and a route listener between two ports: each socket goes to its new role, a kept-alive connection included', async () => {
    const main = await startUpstream((_req, res) => {
      res.end('main');
    });
    const side = await startUpstream((_req, res) => {
      res.end('side');
    });
    cleanups.push(main.close, side.close);
    const [a, b] = [await freePort(), await freePort()];
    const yaml = (mainAt: number, sideAt: number): string =>
      `listen: 127.0.0.1:${mainAt}\nadmin: 127.0.0.1:0\nroutes:\n  - name: side\n    listen: 127.0.0.1:${sideAt}\n    upstream: ${side.url}\n  - name: api\n    upstream: ${main.url}\n`;
    const p = await startCli(yaml(a, b));
    cleanups.push(() => p.stop('SIGKILL'));
    const body = async (port: number): Promise<string> => (await request({ port, path: '/x' })).body;
    expect([await body(a), await body(b)]).toEqual(['main', 'side']);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(async () => agent.destroy());
    const before = await keepAliveGet(agent, b, '/before');
    if ('error' in before) throw new Error(before.error);
    expect(before.body).toBe('side');

    writeFileSync(p.configFile, yaml(b, a));
    p.child.kill('SIGHUP');
    await p.waitForLine((l) => l.msg === 'config reload applied', 'reload applied');
    // Before, the proxy listener was bound first and met the route listener's socket: EADDRINUSE, reload rejected.
    expect(p.lines.filter((l) => l.msg === 'config reload rejected; the previous config keeps serving')).toEqual([]);
    expect(p.lines.some((l) => l.msg === `proxy listener moved to 127.0.0.1:${b}`)).toBe(true);
    expect([await body(a), await body(b)]).toEqual(['side', 'main']);
    // The same connection, now on the proxy listener's port: its next request is routed as the main listener's.
    const after = await keepAliveGet(agent, b, '/after');
    if ('error' in after) throw new Error(after.error);
    expect(after.socket).toBe(before.socket);
    expect(after.body).toBe('main');
    expect(await p.stop('SIGTERM')).toBe(0);
  });

  it('moves the proxy listener onto the port of a route listener the reload drops, and the route listener onto the port it leaves', async () => {
    const up = await slowUpstream();
    const [a, b] = [await freePort(), await freePort()];
    const route = (at: number): string => `  - name: side\n    listen: 127.0.0.1:${at}\n    upstream: ${up.url}\n`;
    const yaml = (mainAt: number, side: string): string => `listen: 127.0.0.1:${mainAt}\nadmin: 127.0.0.1:0\nroutes:\n${side}  - name: api\n    match: { pathPrefix: /api }\n    upstream: ${up.url}\n`;
    const l = await startApp(yaml(a, route(b)));
    cleanups.push(() => l.stop());
    // The route listener takes everything on its port; the proxy listener only what matches /api.
    expect((await request({ port: b, path: '/other' })).status).toBe(200);

    expect(await l.app.reloadText(yaml(b, ''))).toEqual({ ok: true, errors: [] });
    expect((await request({ port: b, path: '/api/x' })).status).toBe(200);
    expect((await request({ port: b, path: '/other' })).status).toBe(404);
    expect(l.app.address('proxy')).toBe(`127.0.0.1:${b}`);
    await waitFor(async () => ((await connectError(a)) === 'ECONNREFUSED' ? true : undefined), 'the old proxy address given up');

    // And back: a route listener on the port the proxy listener leaves.
    expect(await l.app.reloadText(yaml(a, route(b)))).toEqual({ ok: true, errors: [] });
    expect((await request({ port: b, path: '/other' })).status).toBe(200);
    expect((await request({ port: a, path: '/other' })).status).toBe(404);
    expect(l.app.address(`127.0.0.1:${b}`)).toBe(`127.0.0.1:${b}`);
  });

  it('rejects, naming the listener, a reload that gives the admin port to a proxy listener or a proxy port to the admin listener', async () => {
    const up = await slowUpstream();
    const [proxyAt, adminAt, other] = [await freePort(), await freePort(), await freePort()];
    const yaml = (listen: number, admin: number, side?: number): string =>
      `listen: 127.0.0.1:${listen}\nadmin: 127.0.0.1:${admin}\nroutes:\n${side === undefined ? '' : `  - name: side\n    listen: 127.0.0.1:${side}\n    upstream: ${up.url}\n`}  - name: api\n    upstream: ${up.url}\n`;
    const l = await startApp(yaml(proxyAt, adminAt));
    cleanups.push(() => l.stop());
    const cases: Array<[string, string]> = [
      [yaml(adminAt, other), `cannot listen on 127.0.0.1:${adminAt}: the admin listener holds it until this reload applies`],
      [yaml(other, proxyAt), `cannot listen on 127.0.0.1:${proxyAt}: a proxy listener holds it until this reload applies`],
      [yaml(proxyAt, other, adminAt), `cannot listen on 127.0.0.1:${adminAt}: the admin listener holds it until this reload applies`],
    ];
    for (const [text, error] of cases) {
      const result = await l.app.reloadText(text);
      expect(result.ok).toBe(false);
      expect(result.errors.join('\n')).toContain(error);
      // Nothing moved, and nothing was left bound: the third port is still free to take.
      expect(l.app.address('proxy')).toBe(`127.0.0.1:${proxyAt}`);
      expect(l.app.address('admin')).toBe(`127.0.0.1:${adminAt}`);
      expect((await request({ port: proxyAt, path: '/x' })).status).toBe(200);
      expect((await request({ port: adminAt, path: '/readyz' })).status).toBe(200);
      expect(await connectError(other)).toBe('ECONNREFUSED');
    }
  });

  it('runs two reloads of the same move one after the other: both apply, the second finds nothing to move', async () => {
    const up = await slowUpstream();
    const yaml = (listen: string): string => `listen: ${listen}\nadmin: 127.0.0.1:0\nroutes:\n  - name: api\n    upstream: ${up.url}\n`;
    const l = await startApp(yaml('127.0.0.1:0'));
    cleanups.push(() => l.stop());
    const port = await freePort();
    // As a file watcher and a SIGHUP do for one edit.
    const results = await Promise.all([l.app.reloadText(yaml(`127.0.0.1:${port}`)), l.app.reloadText(yaml(`127.0.0.1:${port}`))]);
    expect(results).toEqual([
      { ok: true, errors: [] },
      { ok: true, errors: [] },
    ]);
    expect(l.logs.lines.filter((x) => x.msg === `proxy listener moved to 127.0.0.1:${port}`)).toHaveLength(1);
    expect((await request({ port, path: '/quick' })).status).toBe(200);
  });
});
