/**
 * `npm run demo`: the sidecar story on one machine, no network. A legacy
 * client that knows only http://localhost:15001 calls through the real
 * legate CLI to a flaky upstream, an upstream that goes down and comes back,
 * and an upstream that requires mutual TLS; then routes.yaml is edited while
 * it runs. Prints what happened and exits 0 when every step went as expected.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { readJsonLines } from './json-lines.js';
import { createDemoPki } from './pki.js';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli.js');
const color = process.stdout.isTTY === true;
const bold = (s: string) => (color ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string) => (color ? `\x1b[2m${s}\x1b[0m` : s);
const mark = (ok: boolean) => (ok ? (color ? '\x1b[32m✓\x1b[0m' : '✓') : color ? '\x1b[31m✗\x1b[0m' : '✗');

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** The legacy app's whole HTTP client: one base URL, nothing else. */
function legacyCall(baseUrl: string, pathname: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.get(new URL(pathname, baseUrl), { headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
  });
}

async function listen(server: net.Server, port = 0): Promise<number> {
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

async function portIsFree(port: number): Promise<boolean> {
  const probe = net.createServer();
  try {
    await listen(probe, port);
    probe.close();
    return true;
  } catch {
    return false;
  }
}

async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Step {
  title: string;
  detail: string;
  ok: boolean;
}

async function main(): Promise<number> {
  const dir = mkdtempSync(path.join(tmpdir(), 'legate-demo-'));
  const children: ChildProcess[] = [];
  const servers: net.Server[] = [];
  const steps: Step[] = [];
  const record = (title: string, ok: boolean, detail: string): void => {
    steps.push({ title, ok, detail });
    process.stdout.write(`  ${mark(ok)} ${title}\n      ${dim(detail)}\n`);
  };

  try {
    process.stdout.write(bold('legate demo') + dim(' — an ambassador sidecar for a legacy app, all on 127.0.0.1\n\n'));

    // The remote services.
    const triesById = new Map<string, number>();
    const inventory = http.createServer((req, res) => {
      // Fails the first two tries of each request, as a flaky service behind a bad network would.
      const id = String(req.headers['x-request-id']);
      const n = (triesById.get(id) ?? 0) + 1;
      triesById.set(id, n);
      if (n <= 2) {
        res.writeHead(503, { 'content-type': 'text/plain' });
        res.end('inventory is overloaded\n');
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ item: 42, inStock: 7 }));
      }
    });
    servers.push(inventory);
    const inventoryPort = await listen(inventory);

    const ledgerHandler: http.RequestListener = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ balance: 1250 }));
    };
    let ledger = http.createServer(ledgerHandler);
    servers.push(ledger);
    const ledgerPort = await listen(ledger);

    const pki = createDemoPki(dir, 'payments.internal');
    const payments = https.createServer(
      { key: readFileSync(pki.serverKey), cert: readFileSync(pki.serverCert), ca: readFileSync(pki.ca), requestCert: true, rejectUnauthorized: true },
      (req, res) => {
        const socket = req.socket as TLSSocket;
        const peer = socket.getPeerCertificate();
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ charged: true, clientCertificate: peer.subject?.CN, tls: socket.getProtocol() }));
      },
    );
    servers.push(payments);
    const paymentsPort = await listen(payments);

    // legate, configured the way a platform team would.
    const listenPort = (await portIsFree(15001)) ? 15001 : await listen(net.createServer()).then((p) => p);
    const adminPort = (await portIsFree(15000)) ? 15000 : 0;
    const baseUrl = `http://localhost:${listenPort}`;
    const routes = (inventoryRetries: number) => `# written by npm run demo
listen: 127.0.0.1:${listenPort}
admin: 127.0.0.1:${adminPort}
drainTimeout: 2s
routes:
  - name: inventory
    match: { pathPrefix: /inventory }
    stripPrefix: true
    upstream: http://127.0.0.1:${inventoryPort}
    retry: { retries: ${inventoryRetries}, backoff: { base: 20ms, max: 100ms } }
    optOut: [retry]
  - name: ledger
    match: { pathPrefix: /ledger }
    stripPrefix: true
    upstream: http://127.0.0.1:${ledgerPort}
    retry: { retries: 0 }
    circuitBreaker: { volumeThreshold: 4, errorThresholdPercentage: 50, window: 10s, resetTimeout: 2s }
  - name: payments
    match: { pathPrefix: /payments }
    stripPrefix: true
    upstream: https://127.0.0.1:${paymentsPort}
    tls:
      ca: ${pki.ca}
      cert: ${pki.clientCert}
      key: ${pki.clientKey}
      serverName: payments.internal
`;
    const configFile = path.join(dir, 'routes.yaml');
    writeFileSync(configFile, routes(3));
    const lines: Array<Record<string, unknown>> = [];
    const child = spawn(process.execPath, [CLI, '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LOG_LEVEL: 'info' } });
    children.push(child);
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    if (child.stdout !== null) readJsonLines(child.stdout, (line) => line !== undefined && lines.push(line));
    await waitUntil(() => {
      if (child.exitCode !== null) throw new Error(`legate exited: ${stderr}`);
      return lines.some((l) => l.msg === 'legate started');
    }, 'legate to start');
    const started = lines.find((l) => l.msg === 'legate started');
    process.stdout.write(`legate is up: app side ${bold(String(started?.listen))}, admin ${String(started?.admin)}, 3 routes\n`);
    process.stdout.write(`the legacy app knows one thing: ${bold(baseUrl)}\n\n`);

    // 1. A normal call.
    const normal = await legacyCall(baseUrl, '/ledger/balance');
    record('a normal call', normal.status === 200 && normal.headers['x-legate-attempts'] === '1', `GET /ledger/balance → ${normal.status} ${normal.body.trim()} (route ${String(normal.headers['x-legate-route'])}, ${String(normal.headers['x-legate-attempts'])} try)`);

    // 2. A flaky upstream, made reliable by retries.
    const flaky = await legacyCall(baseUrl, '/inventory/items/42');
    record(
      'a flaky upstream, made reliable by retries',
      flaky.status === 200 && flaky.headers['x-legate-attempts'] === '3',
      `GET /inventory/items/42 → ${flaky.status} after ${String(flaky.headers['x-legate-attempts'])} tries (the upstream answered 503, 503, then 200)`,
    );

    // 3. The app opts out of retries for one call.
    const optOut = await legacyCall(baseUrl, '/inventory/items/42', { 'x-legate-opt-out': 'retry' });
    record(
      'the app opts out of retries for one call',
      optOut.status === 503 && optOut.headers['x-legate-attempts'] === '1',
      `x-legate-opt-out: retry → ${optOut.status} "${optOut.body.trim()}" after ${String(optOut.headers['x-legate-attempts'])} try, passed through as the upstream sent it`,
    );

    // 4. An outage opens the breaker; recovery closes it.
    ledger.close();
    ledger.closeAllConnections();
    await once(ledger, 'close');
    const outage: number[] = [];
    let open: Reply | undefined;
    for (let i = 0; i < 10 && open === undefined; i++) {
      const r = await legacyCall(baseUrl, '/ledger/balance');
      outage.push(r.status);
      if (r.headers['x-legate-error'] === 'circuit-open') open = r;
    }
    record(
      'an outage opens the circuit breaker',
      open !== undefined,
      `ledger down: ${outage.join(', ')} → circuit-open, Retry-After ${String(open?.headers['retry-after'])}s; legate stops calling the dead service`,
    );
    ledger = http.createServer(ledgerHandler);
    servers.push(ledger);
    await listen(ledger, ledgerPort);
    const reopenedAt = Date.now();
    let recovered: Reply | undefined;
    await waitUntil(async () => {
      recovered = await legacyCall(baseUrl, '/ledger/balance');
      return recovered.status === 200;
    }, 'the breaker to let a trial through', 10_000);
    record(
      'the service comes back; the breaker closes',
      recovered?.status === 200,
      `after ${((Date.now() - reopenedAt) / 1000).toFixed(1)} s a trial request succeeded and closed the breaker → ${String(recovered?.status)} ${recovered?.body.trim() ?? ''}`,
    );

    // 5. mTLS to a service the app could never have called itself.
    const mtls = await legacyCall(baseUrl, '/payments/charge');
    const charged = mtls.status === 200 ? (JSON.parse(mtls.body) as { clientCertificate?: string; tls?: string }) : {};
    record(
      'mutual TLS the app knows nothing about',
      mtls.status === 200 && charged.clientCertificate === 'legate-demo-client',
      `GET /payments/charge over plain http → ${mtls.status}; payments saw client certificate CN=${String(charged.clientCertificate)} over ${String(charged.tls)}`,
    );

    // 6. The platform team edits routes.yaml while traffic flows.
    const applied = lines.filter((l) => l.msg === 'config reload applied').length;
    writeFileSync(configFile, routes(0));
    await waitUntil(() => lines.filter((l) => l.msg === 'config reload applied').length > applied, 'the reload', 10_000);
    const afterReload = await legacyCall(baseUrl, '/inventory/items/43');
    record(
      'routes.yaml edited live: retries turned off for inventory',
      afterReload.status === 503 && afterReload.headers['x-legate-attempts'] === '1',
      `reload applied without a restart; GET /inventory/items/43 → ${afterReload.status} after ${String(afterReload.headers['x-legate-attempts'])} try`,
    );

    child.kill('SIGTERM');
    const [code] = (await once(child, 'exit')) as [number | null];
    record('SIGTERM drains and stops legate', code === 0, `exit code ${String(code)}`);

    const passed = steps.filter((s) => s.ok).length;
    process.stdout.write(`\n${bold('summary')}: ${passed} of ${steps.length} steps as expected`);
    process.stdout.write(passed === steps.length ? ' — legate did its job.\n' : '.\n');
    process.stdout.write(dim('next: npx legate explain --config routes.yaml GET /httpbin/get · README.md\n'));
    return passed === steps.length ? 0 : 1;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    for (const s of servers) {
      s.close();
      if (s instanceof http.Server) s.closeAllConnections();
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`demo failed: ${(e as Error).message}\n`);
    process.exitCode = 1;
  },
);
