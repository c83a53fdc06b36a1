/**
 * What TLS to the upstream costs a Node client by itself, with no proxy
 * around it: CPU µs per request of this process for undici's `Client` and
 * for `http(s).Agent`, with and without TLS (mTLS: the client presents a
 * certificate), against bench/upstream.mjs on another core. The floor under
 * legate's mTLS route (docs/benchmarks.md, "Where the CPU goes").
 *
 * Usage: node bench/tls-client-cost.mjs [--requests 50000] [--repeats 3] [--path /small]
 *
 * Needs openssl and taskset (the upstream runs on core 0, this process on
 * core 1). 50 requests in flight over keep-alive connections; connections
 * and JIT are warmed up with 2,000 requests before the measured ones. The
 * four clients take turns, `--repeats` times; medians are reported.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { makeCerts } from './lib/certs.mjs';
import { freePort, waitForPort } from './lib/procs.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const require = createRequire(import.meta.url);
const Client = require('undici/lib/dispatcher/client.js');

const { values } = parseArgs({ options: { requests: { type: 'string', default: '50000' }, repeats: { type: 'string', default: '3' }, path: { type: 'string', default: '/small' } } });
const N = Number(values.requests);
const IN_FLIGHT = 50;

const dir = mkdtempSync(path.join(os.tmpdir(), 'legate-tls-cost-'));
makeCerts(dir);
const tlsOptions = {
  ca: readFileSync(path.join(dir, 'ca.pem')),
  cert: readFileSync(path.join(dir, 'client.pem')),
  key: readFileSync(path.join(dir, 'client-key.pem')),
  servername: 'localhost',
};

const [httpPort, httpsPort] = [await freePort(), await freePort()];
const upstream = spawn('taskset', ['-c', '0', process.execPath, path.join(ROOT, 'bench/upstream.mjs'), '--http', String(httpPort), '--https', String(httpsPort), '--certs', dir], { stdio: 'inherit' });
process.on('exit', () => {
  upstream.kill();
  rmSync(dir, { recursive: true, force: true });
});
await waitForPort(httpPort);
await waitForPort(httpsPort);
// This process measures only itself: keep it off the upstream's core.
execFileSync('taskset', ['-cp', '1', String(process.pid)], { stdio: 'ignore' });

/** One request function per client kind; each resolves when the response has been read to its end. */
function clientOf(kind) {
  const secure = kind.endsWith('https');
  const port = secure ? httpsPort : httpPort;
  if (kind.startsWith('undici')) {
    const clients = Array.from({ length: IN_FLIGHT }, () =>
      new Client(`${secure ? 'https' : 'http'}://127.0.0.1:${port}`, { connect: secure ? tlsOptions : undefined }));
    let next = 0;
    const handler = (resolve, reject) => ({
      onConnect() {},
      onHeaders: () => true,
      onData: () => true,
      onComplete: () => resolve(),
      onError: reject,
    });
    return {
      one: () => new Promise((resolve, reject) => clients[next++ % IN_FLIGHT].dispatch({ path: values.path, method: 'GET' }, handler(resolve, reject))),
      close: () => Promise.all(clients.map((c) => c.close())),
    };
  }
  const mod = secure ? https : http;
  const agent = new mod.Agent({ keepAlive: true, maxSockets: IN_FLIGHT, ...(secure ? tlsOptions : {}) });
  return {
    one: () => new Promise((resolve, reject) => {
      mod.get({ host: '127.0.0.1', port, path: values.path, agent }, (res) => {
        res.on('data', () => {});
        res.on('end', resolve);
      }).on('error', reject);
    }),
    close: () => agent.destroy(),
  };
}

async function drive(one, n) {
  let left = n;
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (left-- > 0) await one();
  }));
}

const KINDS = ['undici-http', 'undici-https', 'agent-http', 'agent-https'];
const clients = Object.fromEntries(KINDS.map((k) => [k, clientOf(k)]));
for (const k of KINDS) await drive(clients[k].one, 2_000);
const samples = Object.fromEntries(KINDS.map((k) => [k, []]));
for (let r = 0; r < Number(values.repeats); r++) {
  for (const k of KINDS) {
    const before = process.cpuUsage();
    await drive(clients[k].one, N);
    const used = process.cpuUsage(before);
    samples[k].push((used.user + used.system) / N);
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const results = {};
for (const k of KINDS) {
  await clients[k].close();
  results[k] = Math.round(median(samples[k]) * 10) / 10;
  process.stdout.write(`${k.padEnd(13)} ${results[k].toFixed(1).padStart(6)} CPU µs/request (runs: ${samples[k].map((x) => x.toFixed(1)).join(', ')})\n`);
}
process.stdout.write(`TLS adds ${(results['undici-https'] - results['undici-http']).toFixed(1)} µs/request to undici's Client and `
  + `${(results['agent-https'] - results['agent-http']).toFixed(1)} µs to Node's agent (${process.version}, ${values.path}, ${N} requests)\n`);
process.exit(0);
