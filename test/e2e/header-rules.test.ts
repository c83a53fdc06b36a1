/**
 * Credential injection and header rules (SPEC §12) through real sockets and
 * the real CLI: the app's own Authorization replaced, a token file rotated
 * while requests flow (the upstream sees the new token within seconds, no
 * restart), a file briefly missing mid-rotation, and the injected values
 * found nowhere in stdout, stderr or /config.
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import type { OutgoingHttpHeaders } from 'node:http';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { headerRulesOf } from '../../src/layers/header-rules.js';
import { startApp, startCli, tempDir, waitFor, type CliProcess } from '../helpers/legate.js';
import { testScope } from '../helpers/scope.js';

const { upstream, defer } = testScope();

/** Writes `value` to `file` the way rotating agents do: a new file renamed over the old one. */
function rotate(file: string, value: string): void {
  const next = `${file}.next`;
  writeFileSync(next, `${value}\n`);
  renameSync(next, file);
}

/** legate in-process with one route whose Authorization comes from a token file holding `token`. */
async function billingWithTokenFile(token: string) {
  const up = await upstream();
  const dir = tempDir();
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, `${token}\n`);
  const legate = await startApp(
    `listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: billing
    upstream: ${up.url}
    retry: { retries: 0 }
    headers:
      request:
        set: { authorization: "Bearer \${file:./token}" }
`,
    path.join(dir, 'routes.yaml'),
  );
  defer(() => legate.stop());
  const route = legate.app.current().routes[0];
  if (route === undefined) throw new Error('route');
  return { up, tokenFile, legate, route };
}

describe('header rules', () => {
  it('injects the credential from a file and the environment, replacing the app’s, and follows a rotation mid-traffic without logging a value', async () => {
    const up = await upstream((_req, res) => {
      res.setHeader('server', 'upstream/1.0');
      res.setHeader('x-upstream-secret-ish', 'internal');
      res.end('ok');
    });
    const dir = tempDir();
    const configFile = path.join(dir, 'routes.yaml');
    const tokenFile = path.join(dir, 'billing-token');
    const first = 'tok-first-6f1d2c';
    const second = 'tok-second-9a8b7c';
    const envSecret = 'env-secret-4e5f6a';
    writeFileSync(tokenFile, `${first}\n`);
    writeFileSync(
      configFile,
      `listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: billing
    upstream: ${up.url}
    retry: { retries: 0 }
    headers:
      request:
        set:
          Authorization: "Bearer \${file:./billing-token}"
          x-api-key: "\${env:LEGATE_TEST_API_KEY}"
        remove: [x-internal-debug]
      response:
        set: { x-served-via: legate }
        remove: [server, x-upstream-secret-ish]
`,
    );
    const legate: CliProcess = await startCli('', { configFile, env: { LEGATE_TEST_API_KEY: envSecret } });
    defer(() => legate.stop('SIGKILL'));

    const r = await request({
      port: legate.proxyPort,
      path: '/invoices',
      headers: { authorization: 'Bearer app-held-token', 'x-internal-debug': 'yes', 'x-kept': 'kept' },
    });
    expect(r.status).toBe(200);
    const seen = up.seen[0];
    expect(seen?.headers.authorization).toBe(`Bearer ${first}`);
    expect(seen?.headers['x-api-key']).toBe(envSecret);
    expect(seen?.headers['x-internal-debug']).toBeUndefined();
    expect(seen?.headers['x-kept']).toBe('kept');
    expect(r.headers.server).toBeUndefined();
    expect(r.headers['x-upstream-secret-ish']).toBeUndefined();
    expect(r.headers['x-served-via']).toBe('legate');

    // Requests keep flowing while the token is rotated; every one carries a whole token, old or new.
    let stop = false;
    const statuses: number[] = [];
    const traffic = (async () => {
      while (!stop) statuses.push((await request({ port: legate.proxyPort, path: '/invoices', headers: { authorization: 'Bearer app-held-token' } })).status);
    })();
    await waitFor(() => (up.seen.length > 5 ? true : undefined), 'traffic before the rotation');
    rotate(tokenFile, second);
    const rotatedAt = up.seen.length;
    await waitFor(() => (up.seen.at(-1)?.headers.authorization === `Bearer ${second}` ? true : undefined), 'the rotated token at the upstream', 8_000);
    const switchedAt = up.seen.findIndex((s) => s.headers.authorization === `Bearer ${second}`);
    await waitFor(() => (up.seen.length > switchedAt + 5 ? true : undefined), 'traffic after the rotation');
    stop = true;
    await traffic;
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(switchedAt).toBeGreaterThanOrEqual(rotatedAt);
    const tokens = up.seen.map((s) => s.headers.authorization);
    expect(tokens.every((t) => t === `Bearer ${first}` || t === `Bearer ${second}`)).toBe(true);
    // Once the new token is used, the old one never comes back.
    expect(tokens.slice(switchedAt).every((t) => t === `Bearer ${second}`)).toBe(true);

    // Every request's access line is out before stdout is searched: the absence below is not a log not yet written.
    const sent = up.seen.length;
    await waitFor(() => (legate.lines.filter((l) => l.msg === 'access').length >= sent ? true : undefined), 'an access line per request');
    const config = await request({ port: legate.adminPort, path: '/config' });
    expect(config.status).toBe(200);
    expect(config.body).toContain('authorization');
    for (const secret of [first, second, envSecret, 'app-held-token']) {
      expect(config.body).not.toContain(secret);
      expect(legate.stdout()).not.toContain(secret);
      expect(legate.stderr()).not.toContain(secret);
    }
  });

  it('keeps using the last token while the file is gone mid-rotation, then the new one', async () => {
    const { up, tokenFile, legate, route } = await billingWithTokenFile('kept-token');
    rmSync(tokenFile);
    // Re-read now rather than waiting for the watcher: the gap is then certainly seen.
    headerRulesOf(route).check();
    for (let i = 0; i < 3; i++) {
      expect((await request({ port: legate.proxyPort, path: '/' })).status).toBe(200);
      expect(up.seen.at(-1)?.headers.authorization).toBe('Bearer kept-token');
    }
    writeFileSync(tokenFile, 'next-token\n');
    // This time the watcher finds it by itself.
    await waitFor(
      async () => ((await request({ port: legate.proxyPort, path: '/' })).status === 200 && up.seen.at(-1)?.headers.authorization === 'Bearer next-token' ? true : undefined),
      'the new file to be used',
      8_000,
    );
    expect(JSON.stringify(legate.logs.lines)).not.toMatch(/kept-token|next-token/);
  });

  it('re-reads a changed value file at once when asked (SIGHUP), ahead of its watcher', async () => {
    const { up, tokenFile, legate, route } = await billingWithTokenFile('old-token');
    writeFileSync(tokenFile, 'new-token\n');
    legate.app.refreshFiles();
    // Read in the same synchronous stretch as the call: no watcher callback can have run in between.
    const headers: OutgoingHttpHeaders = {};
    headerRulesOf(route).applyToRequest(headers);
    expect(headers.authorization).toBe('Bearer new-token');
    expect(legate.logs.lines.some((l) => l.msg === 'header value file changed; the new value is used from the next request')).toBe(true);
    expect((await request({ port: legate.proxyPort, path: '/' })).status).toBe(200);
    expect(up.seen.at(-1)?.headers.authorization).toBe('Bearer new-token');
  });
});
