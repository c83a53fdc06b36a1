/**
 * legate's benchmark harness (run it through `npm run bench`, which installs
 * wrk and nginx first). In one run, against one upstream, it measures:
 *
 *   direct        wrk → upstream
 *   nginx         nginx, 1 worker, upstream keepalive
 *   bare          bench/bare-http-proxy.mjs: http-proxy + keep-alive agent
 *   legate-plain  legate, one route, no retries, no breaker, logLevel silent (no access log)
 *   legate-full   legate, the whole chain: routing past 4 other routes,
 *                 retry policy, circuit breaker, access log to a file, metrics
 *   legate-mtls   legate, the plain route to an HTTPS upstream requiring a client cert
 *   nginx-mtls    nginx, the same mTLS to the same upstream: what TLS costs a proxy that is
 *                 not legate, the yardstick for legate's mTLS ÷ plain ratio
 *
 * with small (39 B) and 16 KiB responses:
 *   - closed-loop throughput: wrk, 1 thread, 50 connections; req/s and the
 *     proxy's CPU µs per request (utime+stime from /proc, all its threads);
 *   - latency at a fixed 1,000 req/s (bench/openloop.mjs: open loop,
 *     latency from the scheduled send time), added over direct;
 *   - legate's RSS with 1,000 idle keep-alive connections, and over a soak
 *     at 1,000 req/s.
 *
 * Placement on this 2-core machine: core 0 runs the upstream, the load
 * generator and this harness; core 1 runs only the proxy under test. So each
 * proxy gets a whole core to itself, and the load side is the same for all
 * of them. ("direct" runs entirely on core 0: it is the load side's own
 * ceiling, not a proxy.)
 *
 * Repeats are interleaved (repeat 1 of every target, then repeat 2, …) so a
 * burst of noise from elsewhere on the machine lands on all targets rather
 * than on one. Ratios within a run are the result; absolute numbers move
 * with whatever else the machine is doing.
 *
 * Environment:
 *   BENCH_REPEATS=5          repeats of every measurement (medians are reported)
 *   BENCH_SECONDS=4          wrk duration per throughput run
 *   BENCH_WARMUP_SECONDS=5   wrk warm-up per target and body before the throughput runs (1 with BENCH_QUICK)
 *   BENCH_LATENCY_SECONDS=3  open-loop duration per latency run (+0.5 s warm-up); 0 skips latency
 *   BENCH_RATE=1000          open-loop rate, req/s
 *   BENCH_CONNECTIONS=50     wrk connections
 *   BENCH_SOAK_SECONDS=120   soak length (0 skips it)
 *   BENCH_IDLE_CONNECTIONS=1000  idle keep-alive connections for the memory measure (0 skips it)
 *   BENCH_IDLE_SETTLE_SECONDS=50  how long those connections stay open before the settled RSS is read
 *                            (below legate's 65 s keep-alive timeout, which would close them)
 *   BENCH_QUICK=1            smoke run: 1 repeat, 2 s runs, no soak, docs untouched
 *   BENCH_KEEP_TMP=1         keep the temp dir (configs, logs, certs) for a post-mortem
 *   BENCH_ONLY=a,b           only these targets (plus direct, always)
 *   BENCH_CANDIDATE=FILE     also measure another build's dist/cli.js (full chain): A/B in one run;
 *                            NAME=FILE,NAME=FILE for several (targets candidate-NAME); FILE may be
 *                            followed by Node flags for that candidate alone ("NAME=FILE --flag")
 *   BENCH_CANDIDATE_CONFIG=full  the route the candidates are measured with: plain, full or mtls
 *   BENCH_BARE_NODE_ARGS="..."  Node/V8 flags for bare http-proxy (none by default): does a flag help the floor too?
 *   BENCH_NODE_ARGS="..."    Node/V8 flags for every legate process (e.g. --max-semi-space-size=4), after
 *                            the ones the Docker image starts legate with (NODE_OPTIONS and ENTRYPOINT; always applied)
 *   BENCH_MEMORY_LIMIT=128   run each legate and bare http-proxy process in a memory cgroup of this many MiB
 *                            (root and a writable cgroup v1 or v2 memory controller), as under a pod's limit:
 *                            Node sizes V8's heap from it
 *   BENCH_WAIT_QUIET=60      wait up to this many seconds for a quiet machine before measuring
 *   BENCH_REDO_BUDGET=12     throughput runs disturbed by other work (>25% of the proxy's core) are re-run, this many at most
 *   BENCH_STALLS=1           diagnosis, not measurement: preload bench/stall-probe.mjs into every legate process,
 *                            list the latency runs' slow requests, and print what each proxy was doing during
 *                            every burst of them (bench/lib/stalls.mjs); results go to <time>-stalls.json,
 *                            docs and latest.json are left alone
 * With --profile it instead profiles one proxy under load (see profileMode at the end).
 *
 * Output: bench/results/<start time>.json (and latest.json), the tables on
 * stdout, and the generated section of docs/benchmarks.md (full runs only).
 */
import { Buffer } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { setInterval, clearInterval } from 'node:timers';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { capture, childPids, coreBusySeconds, cpuSeconds, freePort, killAllNow, rssBytes, rssByMapping, start, stop, stopAll, tail, waitForPort } from './lib/procs.mjs';
import { median, percentile, ratio, round } from './lib/stats.mjs';
import { makeCerts } from './lib/certs.mjs';
import { renderStalls, SLOW_MS, stallReport } from './lib/stalls.mjs';
import { memoryCgroup, parseMemoryLimit, removeCgroups } from './lib/cgroup.mjs';
import { formatAllocSummary, summariseAlloc } from './alloc-summary.mjs';
import { formatSummary, summarise } from './profile-summary.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist/cli.js');
const WRK_LUA = path.join(ROOT, 'bench/wrk-report.lua');
const DOCS = path.join(ROOT, 'docs/benchmarks.md');
const RESULTS = path.join(ROOT, 'bench/results');

// ---------------------------------------------------------------- settings

const env = process.env;
const QUICK = env.BENCH_QUICK === '1';
const PROFILE = process.argv.includes('--profile');
const PROFILE_KIND = env.BENCH_PROFILE_KIND ?? 'cpu';
if (!['cpu', 'alloc'].includes(PROFILE_KIND)) throw new Error(`BENCH_PROFILE_KIND must be cpu or alloc, not ${PROFILE_KIND}`);
const num = (v, d) => (v === undefined || v === '' || !Number.isFinite(Number(v)) ? d : Number(v));

/** Node flags from a BENCH_*_NODE_ARGS variable or NODE_OPTIONS: words separated by spaces. */
const nodeFlags = (v) => (v ? v.split(/\s+/).filter(Boolean) : []);

/**
 * The Node flags the Docker image starts legate with (its `ENV NODE_OPTIONS`,
 * then its ENTRYPOINT between `node` and the script): every legate process
 * here gets them too, so the bench measures legate as it ships.
 * BENCH_NODE_ARGS adds to them.
 */
function imageNodeFlags() {
  const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
  const options = /^ENV NODE_OPTIONS=(?:"([^"]*)"|(\S+))$/m.exec(dockerfile);
  const m = /^ENTRYPOINT (\[.*\])$/m.exec(dockerfile);
  const argv = m ? JSON.parse(m[1]) : [];
  return [...nodeFlags(options?.[1] ?? options?.[2]), ...(argv[0] === 'node' ? argv.slice(1, -1) : [])];
}

const STALLS = env.BENCH_STALLS === '1';

const S = {
  quick: QUICK,
  stalls: STALLS,
  legateNodeFlags: [
    ...imageNodeFlags(),
    ...nodeFlags(env.BENCH_NODE_ARGS),
    ...(STALLS ? ['--import', path.join(ROOT, 'bench/stall-probe.mjs')] : []),
  ],
  bareNodeFlags: nodeFlags(env.BENCH_BARE_NODE_ARGS),
  // BENCH_MEMORY_LIMIT: each legate and bare http-proxy process in a memory cgroup of this many MiB.
  memoryLimitMiB: parseMemoryLimit(env.BENCH_MEMORY_LIMIT),
  repeats: Math.max(1, Math.round(num(env.BENCH_REPEATS, QUICK ? 1 : 5))),
  // wrk takes whole seconds only.
  seconds: Math.max(1, Math.round(num(env.BENCH_SECONDS, QUICK ? 2 : 4))),
  // Long enough for V8 to finish optimising the longest path (the full chain: TurboFan was 14-15% of
  // its core in the first 4 s of load and ~0 after; docs/benchmarks.md "Warm-up").
  warmupSeconds: Math.max(1, Math.round(num(env.BENCH_WARMUP_SECONDS, QUICK ? 1 : 5))),
  connections: Math.round(num(env.BENCH_CONNECTIONS, 50)),
  rate: Math.round(num(env.BENCH_RATE, 1000)),
  latencySeconds: num(env.BENCH_LATENCY_SECONDS, QUICK ? 2 : 3),
  latencyConnections: 20,
  soakSeconds: QUICK ? 0 : num(env.BENCH_SOAK_SECONDS, 120),
  soakWarmupSeconds: 10,
  idleConnections: Math.round(num(env.BENCH_IDLE_CONNECTIONS, 1000)),
  idleSettleSeconds: Math.max(2, num(env.BENCH_IDLE_SETTLE_SECONDS, 50)),
  // With fewer than 2 cores nothing can be pinned apart; run unpinned and say so.
  loadCpu: os.cpus().length >= 2 ? 0 : undefined,
  proxyCpu: os.cpus().length >= 2 ? 1 : undefined,
};

/** A run during which other processes took more than this share of the proxy's core counts as noisy. */
const NOISY_PCT = 25;
/** Noisy throughput runs measured again, at most this many per bench run. */
let redoBudget = Math.round(num(env.BENCH_REDO_BUDGET, 12));
let redone = 0;

const BODIES = [
  { id: 'small', path: '/small', bytes: 39, label: 'small (39 B)' },
  { id: '16k', path: '/16k', bytes: 16 * 1024, label: '16 KiB' },
];

/** Every target, in table order. `kind` says how it is started. */
const TARGET_DEFS = [
  { id: 'direct', kind: 'direct', label: 'direct (no proxy)' },
  { id: 'nginx', kind: 'nginx', label: 'nginx, 1 worker, upstream keepalive' },
  { id: 'bare', kind: 'bare', label: 'bare http-proxy + keep-alive agent' },
  { id: 'legate-plain', kind: 'legate', config: 'plain', label: 'legate, one plain route' },
  { id: 'legate-full', kind: 'legate', config: 'full', label: 'legate, full chain' },
  { id: 'legate-mtls', kind: 'legate', config: 'mtls', label: 'legate, mTLS route' },
  // What TLS to the upstream costs a proxy that is not legate: the yardstick for the mTLS ratio.
  { id: 'nginx-mtls', kind: 'nginx', tls: true, label: 'nginx, mTLS to the upstream (reference)' },
];

// A/B in one run: BENCH_CANDIDATE=/path/to/other/dist/cli.js adds that build's full chain as one more
// target, `candidate-full`; several as NAME=PATH,NAME=PATH add `candidate-NAME` each.
// A path may be followed by Node flags for that candidate alone: `semi2=dist/cli.js --max-semi-space-size=2`.
// BENCH_CANDIDATE_CONFIG=plain|mtls measures the candidates with that route instead of the full chain.
const CANDIDATE_CONFIG = env.BENCH_CANDIDATE_CONFIG ?? 'full';
if (!['plain', 'full', 'mtls'].includes(CANDIDATE_CONFIG)) throw new Error(`BENCH_CANDIDATE_CONFIG must be plain, full or mtls, not ${CANDIDATE_CONFIG}`);
const CANDIDATE_LABEL = { plain: 'one plain route', full: 'full chain', mtls: 'mTLS route' }[CANDIDATE_CONFIG];
for (const [i, entry] of (env.BENCH_CANDIDATE ?? '').split(',').filter(Boolean).entries()) {
  const eq = entry.indexOf('=');
  const name = eq === -1 ? (i === 0 ? 'full' : String(i + 1)) : entry.slice(0, eq);
  const [where = '', ...nodeArgs] = (eq === -1 ? entry : entry.slice(eq + 1)).trim().split(/\s+/);
  const file = path.resolve(where);
  const flags = nodeArgs.length === 0 ? '' : ` ${nodeArgs.join(' ')}`;
  TARGET_DEFS.push({ id: `candidate-${name}`, kind: 'legate', config: CANDIDATE_CONFIG, cli: file, nodeArgs, label: `candidate ${name} (${file}${flags}), ${CANDIDATE_LABEL}` });
}

const only = env.BENCH_ONLY?.split(',').map((s) => s.trim()).filter(Boolean);
const ACTIVE_DEFS = only === undefined ? TARGET_DEFS : TARGET_DEFS.filter((t) => t.id === 'direct' || t.id.startsWith('candidate-') || only.includes(t.id));

// ---------------------------------------------------------------- cleanup

let tmp;
// Whatever happens, no child outlives the harness and the temp dir goes.
process.on('exit', () => {
  killAllNow();
  removeCgroups();
  if (tmp !== undefined && env.BENCH_KEEP_TMP !== '1') rmSync(tmp, { recursive: true, force: true });
});
let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    interrupted = true;
    log(`${sig}: stopping every process the bench started`);
    void stopAll().finally(() => process.exit(130));
  });
}

/** Where bench/stall-probe.mjs writes (BENCH_STALLS=1): inside the run's temp dir. */
function stallDir() {
  const dir = path.join(tmp, 'stalls');
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** The run's temp dir: the one run.sh made (so it can remove it even if this process is killed), or a new one. */
function makeTmp() {
  if (env.BENCH_TMP && existsSync(env.BENCH_TMP)) return env.BENCH_TMP;
  return mkdtempSync(path.join(os.tmpdir(), 'legate-bench-'));
}

const t0 = Date.now();
function log(msg) {
  const s = ((Date.now() - t0) / 1000).toFixed(0).padStart(4);
  process.stderr.write(`[bench ${s}s] ${msg}\n`);
}

// ---------------------------------------------------------------- setup


/**
 * nginx's config. With `tls`, it reaches the upstream's HTTPS port with the
 * same client certificate, CA and server name as legate's mTLS route, and
 * keeps and resumes its TLS sessions as legate does.
 */
function nginxConf(dir, port, upstreamPort, tls) {
  const t = (p) => path.join(dir, p);
  const ssl = tls === undefined
    ? ''
    : `
      proxy_ssl_certificate ${path.join(tls.certs, 'client.pem')};
      proxy_ssl_certificate_key ${path.join(tls.certs, 'client-key.pem')};
      proxy_ssl_trusted_certificate ${path.join(tls.certs, 'ca.pem')};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;`;
  // Every path nginx could write to is inside `dir`: no system file is read or touched.
  return `# generated by bench/bench.mjs
worker_processes 1;
daemon off;
master_process on;
pid ${t('nginx.pid')};
error_log ${t('error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${t('client_body')};
  proxy_temp_path ${t('proxy')};
  fastcgi_temp_path ${t('fastcgi')};
  uwsgi_temp_path ${t('uwsgi')};
  scgi_temp_path ${t('scgi')};
  upstream bench_upstream {
    server 127.0.0.1:${tls === undefined ? upstreamPort : tls.port};
    keepalive 64;
    # nginx 1.22 closes an upstream connection after 1,000 requests by default; Node's agent never does.
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port};
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    location / {
      proxy_pass ${tls === undefined ? 'http' : 'https'}://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";${ssl}
    }
  }
}
`;
}

/** legate's routes.yaml for each configuration under test. */
function legateConfig(kind, { port, admin, upstreamPort, httpsPort, certs, accessLog }) {
  const head = `# generated by bench/bench.mjs (${kind})\nlisten: 127.0.0.1:${port}\nadmin: 127.0.0.1:${admin}\n`;
  // "plain" is the least legate can do: one route, no retries, no breaker, and
  // `logLevel: silent`, the one setting that also turns the access log off.
  const minimal = `    retry: { retries: 0 }\n    circuitBreaker: { enabled: false }\n`;
  switch (kind) {
    case 'plain':
      return `${head}logLevel: silent\nroutes:\n  - name: plain\n    upstream: http://127.0.0.1:${upstreamPort}\n${minimal}`;
    case 'mtls':
      return `${head}logLevel: silent
routes:
  - name: mtls
    upstream: https://127.0.0.1:${httpsPort}
${minimal}    tls:
      ca: ${path.join(certs, 'ca.pem')}
      cert: ${path.join(certs, 'client.pem')}
      key: ${path.join(certs, 'client-key.pem')}
      serverName: localhost
`;
    case 'full':
      return `${head}logLevel: info
accessLog: ${accessLog}
routes:
  # Four routes that never take this traffic, ahead of the one that does: the
  # router walks them on every request, as it would in a real file.
  - name: payments
    match: { pathPrefix: /payments }
    upstream: http://127.0.0.1:9
  - name: billing
    match: { host: billing.internal }
    upstream: http://127.0.0.1:9
  - name: writes
    match: { pathPrefix: /api, methods: [POST, PUT] }
    upstream: http://127.0.0.1:9
  - name: tenant-blue
    match: { headers: { x-tenant: blue } }
    upstream: http://127.0.0.1:9
  - name: full
    match: { pathPrefix: / }
    upstream: http://127.0.0.1:${upstreamPort}
    timeout: 10s
    idleTimeout: 30s
    limits: { maxRequestBody: 10MiB }
    retry:
      retries: 2
      perTryTimeout: 2s
      on: [connect-failure, reset, timeout, 502, 503, 504]
      backoff: { base: 25ms, max: 250ms }
      budget: { ratio: 0.2, minPerSecond: 10 }
    circuitBreaker:
      errorThresholdPercentage: 50
      volumeThreshold: 20
      window: 10s
      resetTimeout: 30s
    optOut: [retry, log]
`;
    default:
      throw new Error(`unknown legate config ${kind}`);
  }
}

/** One GET; resolves with status, headers and body length. */
function get(port, urlPath, timeoutMs = 5_000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: timeoutMs }, (res) => {
      let n = 0;
      res.on('data', (c) => (n += c.length));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, bytes: n }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath} timed out`)));
    req.on('error', reject);
  });
}

/** Starts one target's process(es); returns the running target. */
async function startTarget(def, ctx) {
  const t = { ...def, port: undefined, pids: () => [], procs: [], error: undefined };
  if (def.kind === 'direct') {
    t.port = ctx.upstreamPort;
    t.pids = () => [];
    return t;
  }
  t.port = await freePort();
  const logFile = path.join(tmp, `${def.id}.log`);
  if (def.kind === 'nginx') {
    const dir = path.join(tmp, def.id);
    mkdirSync(dir, { recursive: true });
    const conf = path.join(dir, 'nginx.conf');
    writeFileSync(conf, nginxConf(dir, t.port, ctx.upstreamPort, def.tls ? { port: ctx.httpsPort, certs: ctx.certs } : undefined));
    // -e: the error log before the config is read, so even that one is ours.
    const p = start('nginx', ctx.nginx, ['-p', dir, '-c', conf, '-e', path.join(dir, 'error.log')], { cpu: S.proxyCpu, log: logFile });
    t.procs.push(p);
    await waitForPort(t.port, { proc: p });
    // Master plus its worker(s); the worker is where the requests are served.
    const workers = childPids(p.pid);
    t.workers = workers;
    t.pids = () => [p.pid, ...workers];
    return t;
  }
  if (def.kind === 'bare') {
    const p = start('bare-http-proxy', process.execPath,
      [...S.bareNodeFlags, path.join(ROOT, 'bench/bare-http-proxy.mjs'), '--port', String(t.port), '--upstream', `http://127.0.0.1:${ctx.upstreamPort}`],
      { cpu: S.proxyCpu, log: logFile, cwd: ROOT, cgroup: proxyCgroup('bare') });
    t.procs.push(p);
    await waitForPort(t.port, { proc: p });
    t.pids = () => [p.pid];
    return t;
  }
  // legate
  const p = await startLegate(def.id, def.config, ctx, t.port, def.nodeArgs ?? [], def.cli);
  t.procs.push(p.proc);
  t.admin = p.admin;
  t.accessLog = p.accessLog;
  t.pids = () => [p.proc.pid];
  return t;
}

/**
 * The memory cgroup a Node proxy process starts in under BENCH_MEMORY_LIMIT (its own, as a sidecar has its
 * own container limit); undefined without it.
 */
function proxyCgroup(name) {
  return S.memoryLimitMiB === null ? undefined : memoryCgroup(name, S.memoryLimitMiB * 2 ** 20);
}

/** Writes a config and starts `node dist/cli.js --config FILE` pinned to the proxy core. */
async function startLegate(name, config, ctx, port, nodeArgs = [], cli = CLI, extraEnv = {}) {
  const admin = await freePort();
  const accessLog = path.join(tmp, `${name}-access.log`);
  const file = path.join(tmp, `${name}.yaml`);
  writeFileSync(file, legateConfig(config, { port, admin, upstreamPort: ctx.upstreamPort, httpsPort: ctx.httpsPort, certs: ctx.certs, accessLog }));
  const childEnv = { ...env, ...extraEnv };
  // The config decides the log level, not whoever ran the bench.
  delete childEnv.LOG_LEVEL;
  if (STALLS) childEnv.BENCH_STALL_DIR = stallDir();
  // The image's Node flags, then BENCH_NODE_ARGS (e.g. --max-semi-space-size=4) to try runtime settings.
  const extra = S.legateNodeFlags;
  const proc = start(name, process.execPath, [...extra, ...nodeArgs, cli, '--config', file], {
    cpu: S.proxyCpu, log: path.join(tmp, `${name}.log`), cwd: ROOT, env: childEnv, cgroup: proxyCgroup(name),
  });
  await waitForPort(port, { proc, timeoutMs: 15_000 });
  return { proc, admin, accessLog, file };
}

/** Checks a target answers both bodies correctly before any number is taken from it. */
async function verify(t) {
  for (const b of BODIES) {
    const r = await get(t.port, b.path);
    if (r.status !== 200) throw new Error(`GET ${b.path} → ${r.status}${r.headers['x-legate-error'] ? ` (${r.headers['x-legate-error']})` : ''}`);
    if (r.bytes !== b.bytes) throw new Error(`GET ${b.path} → ${r.bytes} bytes, expected ${b.bytes}`);
    if (t.kind === 'legate' && r.headers['x-legate-route'] === undefined) throw new Error('response has no x-legate-route header');
  }
}

// ---------------------------------------------------------------- measurements

/** One closed-loop wrk run against `t` with CPU accounting of the proxy and the upstream. */
async function wrkRun(t, body, seconds, ctx) {
  const pids = t.pids();
  const c0 = cpuSeconds(pids);
  const u0 = cpuSeconds([ctx.upstream.pid]);
  const b0 = coreBusySeconds(S.proxyCpu);
  const w0 = performance.now();
  const r = await capture('wrk', 'wrk',
    ['-t1', `-c${S.connections}`, `-d${seconds}s`, '--timeout', '5s', '-s', WRK_LUA, `http://127.0.0.1:${t.port}${body.path}`],
    { cpu: S.loadCpu, timeoutMs: (seconds + 30) * 1000 });
  const wall = (performance.now() - w0) / 1000;
  const cpu = cpuSeconds(pids) - c0;
  const ucpu = cpuSeconds([ctx.upstream.pid]) - u0;
  const busy = coreBusySeconds(S.proxyCpu) - b0;
  const line = r.stdout.split('\n').find((l) => l.startsWith('WRK_JSON '));
  if (line === undefined) throw new Error(`wrk printed no summary (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  const w = JSON.parse(line.slice('WRK_JSON '.length));
  const errors = w.errors.connect + w.errors.read + w.errors.write + w.errors.status + w.errors.timeout;
  return {
    rps: round(w.requests / (w.duration_us / 1e6), 1),
    requests: w.requests,
    errors,
    errorDetail: errors > 0 ? w.errors : undefined,
    bytesPerResponse: round(w.bytes / Math.max(1, w.requests), 0),
    cpuUsPerRequest: pids.length === 0 ? null : round((cpu * 1e6) / Math.max(1, w.requests), 2),
    // Share of its core the proxy used: ~100% means the proxy was the bottleneck.
    proxyCorePct: pids.length === 0 ? null : round((cpu / wall) * 100, 0),
    upstreamCpuUsPerRequest: round((ucpu * 1e6) / Math.max(1, w.requests), 2),
    // Share of the proxy's core that other processes (not the proxy) used meanwhile: the noise gauge.
    othersOnProxyCorePct: S.proxyCpu === undefined ? null : round((Math.max(0, busy - cpu) / wall) * 100, 0),
    wrkLatencyUs: w.latency_us,
  };
}

/** One open-loop run at S.rate against `t`; returns the generator's JSON (with samples). */
async function openLoopRun(t, body, seconds, { warmup = 0.5, samples = true, window, slow } = {}) {
  const args = [path.join(ROOT, 'bench/openloop.mjs'), '--url', `http://127.0.0.1:${t.port}${body.path}`,
    '--rate', String(S.rate), '--seconds', String(seconds), '--warmup', String(warmup), '--connections', String(S.latencyConnections)];
  if (samples) args.push('--samples');
  if (window !== undefined) args.push('--window', String(window));
  if (slow !== undefined) args.push('--slow', String(slow));
  const pids = t.pids?.() ?? [];
  const c0 = cpuSeconds(pids);
  const b0 = coreBusySeconds(S.proxyCpu);
  const w0 = performance.now();
  const r = await capture('openloop', process.execPath, args, { cpu: S.loadCpu, timeoutMs: (seconds + warmup + 60) * 1000 });
  const wall = (performance.now() - w0) / 1000;
  const busy = coreBusySeconds(S.proxyCpu) - b0;
  const cpu = cpuSeconds(pids) - c0;
  const line = r.stdout.trim().split('\n').pop();
  if (r.code !== 0 || line === undefined || !line.startsWith('{')) throw new Error(`openloop failed (exit ${r.code}): ${r.stderr.trim()}`);
  const out = JSON.parse(line);
  // The same noise gauge as for throughput: others' share of the proxy's core while the latencies were taken.
  out.othersOnProxyCorePct = S.proxyCpu === undefined || pids.length === 0 ? null : round((Math.max(0, busy - cpu) / wall) * 100, 0);
  // What a request costs the proxy at a rate it can keep up with (a sidecar's usual state), unlike
  // closed-loop CPU, where a saturated proxy handles many requests per event-loop turn.
  out.cpuUsPerRequest = pids.length === 0 || !(out.sent > 0) ? null : round((cpu * 1e6) / out.sent, 1);
  return out;
}

/**
 * Opens `n` connections to 127.0.0.1:port, sends one GET on each (in waves,
 * so legate's upstream pool stays the size a real app would cause) and keeps
 * them open and idle. Raw sockets, so each really is its own connection.
 */
async function openIdleConnections(port, n, wave = 100) {
  const sockets = [];
  const once = () =>
    new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port });
      let buf = Buffer.alloc(0);
      const fail = (e) => reject(e);
      s.once('error', fail);
      s.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buf.subarray(0, end).toString('latin1');
        const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
        const complete = cl ? buf.length >= end + 4 + Number(cl[1]) : buf.includes('\r\n0\r\n\r\n');
        if (!complete) return;
        s.removeAllListeners('data');
        s.off('error', fail);
        s.on('error', () => undefined);
        const status = Number(head.slice(9, 12));
        if (status !== 200) reject(new Error(`idle connection setup got ${status}`));
        else resolve(s);
      });
      s.once('connect', () => s.write('GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'));
    });
  for (let i = 0; i < n; i += wave) {
    const batch = await Promise.all(Array.from({ length: Math.min(wave, n - i) }, once));
    sockets.push(...batch);
  }
  return sockets;
}

// ---------------------------------------------------------------- machine info

/** A command's output, stdout and stderr together (nginx -v writes to stderr, wrk -v exits 1); null if it cannot run. */
function tryRun(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', timeout: 10_000 });
  if (r.error !== undefined) return null;
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
}

function machineInfo(nginxBin) {
  const cpuModel = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  return {
    cpuModel,
    cores: os.cpus().length,
    memoryGiB: round(os.totalmem() / 2 ** 30, 1),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    nginx: nginxBin ? tryRun(nginxBin, ['-v'])?.replace(/^nginx version: /, '') : null,
    wrk: tryRun('wrk', ['-v'])?.split('\n')[0]?.split(' [')[0] ?? null,
    openssl: tryRun('openssl', ['version'])?.split(' (')[0] ?? null,
    legateCommit: tryRun('git', ['rev-parse', '--short', 'HEAD'])?.split('\n')[0] ?? null,
    // --no-optional-locks: reading status must not write the index (others work in this tree).
    legateTreeDirty: (tryRun('git', ['--no-optional-locks', 'status', '--porcelain', '--untracked-files=no']) ?? '') !== '',
    loadAverageAtStart: os.loadavg().map((x) => round(x, 2)),
  };
}

function findNginx() {
  for (const p of ['/usr/sbin/nginx', '/usr/bin/nginx', '/usr/local/sbin/nginx', '/usr/local/bin/nginx']) if (existsSync(p)) return p;
  return null;
}

// ---------------------------------------------------------------- the run

async function main() {
  tmp = makeTmp();
  const nginx = findNginx();
  const machine = machineInfo(nginx);
  const startedAt = new Date();
  log(`settings: ${JSON.stringify(S)}`);
  log(`temp dir: ${tmp}${env.BENCH_KEEP_TMP === '1' ? ' (kept)' : ' (removed at exit)'}`);
  if (S.proxyCpu === undefined) log('fewer than 2 cores: nothing is pinned; numbers mix load and proxy');

  const certs = path.join(tmp, 'certs');
  makeCerts(certs);
  const ctx = { upstreamPort: await freePort(), httpsPort: await freePort(), certs, nginx, upstream: undefined };
  ctx.upstream = start('upstream', process.execPath,
    [path.join(ROOT, 'bench/upstream.mjs'), '--http', String(ctx.upstreamPort), '--https', String(ctx.httpsPort), '--certs', certs],
    { cpu: S.loadCpu, log: path.join(tmp, 'upstream.log'), cwd: ROOT });
  await waitForPort(ctx.upstreamPort, { proc: ctx.upstream });
  await waitForPort(ctx.httpsPort, { proc: ctx.upstream });

  // Start and check every target; one that fails is reported, not fatal.
  const targets = [];
  const failed = {};
  for (const def of ACTIVE_DEFS) {
    if (def.kind === 'nginx' && nginx === null) {
      failed[def.id] = 'nginx not installed (npm run bench installs it: apt-get install nginx)';
      continue;
    }
    try {
      const t = await startTarget(def, ctx);
      await verify(t);
      targets.push(t);
      log(`${def.id}: up on 127.0.0.1:${t.port}`);
    } catch (e) {
      failed[def.id] = e.message;
      log(`${def.id}: FAILED, left out of this run: ${e.message}`);
      const logFile = path.join(tmp, `${def.id}.log`);
      const last = tail(logFile, 8);
      if (last) log(`${def.id} log tail:\n${last}`);
    }
  }
  const direct = targets.find((t) => t.id === 'direct');
  if (direct === undefined) throw new Error(`the upstream itself does not answer: ${failed.direct}`);

  // ---- closed-loop throughput
  await waitForQuiet();
  log(`warm-up: ${S.warmupSeconds} s per target and body`);
  // Mark-compacts each legate process runs through the closed-loop phase (warm-up included): where a
  // process's bursts fall, here or in its latency runs, depends on how far this phase took it.
  const gcBeforeThroughput = {};
  for (const t of targets) gcBeforeThroughput[t.id] = await markCompacts(t);
  for (const b of BODIES) for (const t of targets) await wrkRun(t, b, S.warmupSeconds, ctx);
  const throughputRuns = {};
  for (let r = 0; r < S.repeats; r++) {
    for (const b of BODIES) {
      // Rotate the order each repeat so no target always runs first (or right after another's heavy run).
      const order = targets.map((_, i) => targets[(i + r) % targets.length]);
      for (const t of order) {
        let m = await wrkRun(t, b, S.seconds, ctx);
        // A run during which other work took a good part of the proxy's core measures that work too: run it
        // again (twice at most, within a budget for the whole bench, so a busy machine cannot stretch it
        // much) and keep the cleanest of the tries.
        for (let again = 0; again < 2 && t.kind !== 'direct' && m.othersOnProxyCorePct > NOISY_PCT && redoBudget > 0; again++) {
          redoBudget--;
          redone++;
          log(`  (${m.othersOnProxyCorePct}% of core ${S.proxyCpu} was others' work: measuring ${t.id} again)`);
          const retry = await wrkRun(t, b, S.seconds, ctx);
          if (retry.othersOnProxyCorePct < m.othersOnProxyCorePct) m = retry;
        }
        ((throughputRuns[b.id] ??= {})[t.id] ??= []).push(m);
        log(`throughput ${r + 1}/${S.repeats} ${b.id.padEnd(5)} ${t.id.padEnd(12)} ${String(m.rps).padStart(9)} req/s` +
          (m.cpuUsPerRequest === null ? '' : `  ${m.cpuUsPerRequest} µs CPU/req, core ${m.proxyCorePct}%`) +
          (m.othersOnProxyCorePct > 5 && t.kind !== 'direct' ? `  (others used ${m.othersOnProxyCorePct}% of core ${S.proxyCpu})` : '') +
          (m.errors > 0 ? `  ERRORS ${JSON.stringify(m.errorDetail)}` : ''));
      }
    }
  }
  const rssAfterLoad = {};
  for (const t of targets) if (t.kind !== 'direct') rssAfterLoad[t.id] = rssBytes(t.pids());
  const markCompactsInThroughput = {};
  for (const t of targets) {
    const gc1 = await markCompacts(t);
    const gc0 = gcBeforeThroughput[t.id];
    if (gc0 !== null && gc1 !== null) markCompactsInThroughput[t.id] = gc1 - gc0;
  }
  if (Object.keys(markCompactsInThroughput).length > 0) {
    log(`mark-compacts during the throughput runs: ${Object.entries(markCompactsInThroughput).map(([id, n]) => `${id} ${n}`).join(', ')}`);
  }

  // ---- open-loop latency
  const latencyRuns = {};
  const slowRuns = [];
  // BENCH_LATENCY_SECONDS=0 skips the latency phase (quick A/B of throughput and CPU only).
  for (let r = 0; r < (S.latencySeconds > 0 ? S.repeats : 0); r++) {
    for (const b of BODIES) {
      const order = targets.map((_, i) => targets[(i + r) % targets.length]);
      for (const t of order) {
        const gc0 = await markCompacts(t);
        const m = await openLoopRun(t, b, S.latencySeconds, { slow: STALLS ? SLOW_MS : undefined });
        const gc1 = await markCompacts(t);
        m.markCompacts = gc0 === null || gc1 === null ? null : gc1 - gc0;
        if (STALLS) {
          slowRuns.push({ body: b.id, target: t.id, repeat: r + 1, pids: t.pids?.() ?? [], result: { startedAt: m.startedAt, slow: m.slow } });
          delete m.slow;
        }
        ((latencyRuns[b.id] ??= {})[t.id] ??= []).push(m);
        log(`latency ${r + 1}/${S.repeats} ${b.id.padEnd(5)} ${t.id.padEnd(12)} p50 ${m.latency.p50} p99 ${m.latency.p99} p99.9 ${m.latency.p999} ms` +
          (m.markCompacts > 0 ? `  (${m.markCompacts} mark-compact${m.markCompacts > 1 ? 's' : ''})` : '') +
          (m.othersOnProxyCorePct > 5 ? `  (others used ${m.othersOnProxyCorePct}% of core ${S.proxyCpu})` : '') +
          (m.errors + m.non2xx + m.unfinished > 0 ? `  ERRORS ${m.errors} non-2xx ${m.non2xx} unfinished ${m.unfinished}` : ''));
      }
    }
  }

  const stalls = STALLS ? stallReport(slowRuns, stallDir()) : undefined;
  if (stalls !== undefined) log(renderStalls(stalls));

  // ---- what legate's full chain actually did (so a chain that silently skips its work is visible)
  const legateChecks = {};
  for (const t of targets.filter((x) => x.kind === 'legate')) {
    const c = { accessLogBytes: existsSync(t.accessLog) ? statSync(t.accessLog).size : 0 };
    try {
      const m = await getText(t.admin, '/metrics');
      c.metricsBytes = m.length;
      c.metricsHasRequestCounter = /^legate_requests_total\{/m.test(m) || /^legate_requests/m.test(m);
    } catch (e) {
      c.metricsError = e.message;
    }
    c.markCompactsInThroughput = markCompactsInThroughput[t.id] ?? null;
    legateChecks[t.id] = c;
  }

  // The throughput/latency targets are done; free the proxy core for the memory tests.
  for (const t of targets) for (const p of t.procs) await stop(p, { extraPids: t.workers ?? [] });

  // ---- memory: 1,000 idle keep-alive connections on a fresh legate (full chain)
  let idle = null;
  if (S.idleConnections > 0 && !failed['legate-full'] && ACTIVE_DEFS.some((d) => d.id === 'legate-full')) {
    log(`memory: fresh legate (full chain), ${S.idleConnections} idle keep-alive connections`);
    idle = await idleMemory(ctx, 'legate');
    log(`memory: RSS ${idleSummary(idle)}`);
    if (ACTIVE_DEFS.some((d) => d.id === 'bare')) {
      idle.bare = await idleMemory(ctx, 'bare');
      log(`memory: bare http-proxy for scale: RSS ${idleSummary(idle.bare)}`);
    }
  }

  // ---- soak: RSS over a long run at 1,000 req/s on another fresh legate (full chain)
  let soak = null;
  if (S.soakSeconds > 0 && !failed['legate-full'] && ACTIVE_DEFS.some((d) => d.id === 'legate-full')) {
    log(`soak: ${S.soakSeconds} s at ${S.rate} req/s (after ${S.soakWarmupSeconds} s warm-up), RSS sampled every second`);
    soak = await soakRun(ctx);
    log(`soak: RSS ${mib(soak.rssStart)} → ${mib(soak.rssEnd)} (${soak.growthPct > 0 ? '+' : ''}${soak.growthPct}%), max ${mib(soak.rssMax)}`);
  }

  await stopAll();
  removeCgroups();

  // ---- assemble
  const results = assemble({ machine, startedAt, targets, failed, throughputRuns, latencyRuns, rssAfterLoad, legateChecks, idle, soak });
  if (stalls !== undefined) results.stalls = stalls;
  const md = renderMarkdown(results);
  process.stdout.write('\n' + md + '\n');

  mkdirSync(RESULTS, { recursive: true });
  const stamp = startedAt.toISOString().replace(/[:]/g, '-').replace(/\.\d+Z$/, 'Z');
  const file = path.join(RESULTS, `${stamp}${STALLS ? '-stalls' : QUICK ? '-quick' : ''}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  log(`results: ${path.relative(ROOT, file)}`);
  if (!QUICK && !STALLS) {
    copyFileSync(file, path.join(RESULTS, 'latest.json'));
    writeDocs(md);
    log(`updated ${path.relative(ROOT, DOCS)} and bench/results/latest.json`);
  } else {
    log(`${STALLS ? 'stall diagnosis' : 'quick run'}: docs/benchmarks.md and latest.json left as they were`);
  }
  log(`done in ${Math.round((Date.now() - t0) / 1000)} s`);
}

/**
 * Waits (up to BENCH_WAIT_QUIET seconds, default 60) until both cores are less
 * than 25% busy over a second, so the run does not start in the middle of
 * somebody's test suite. Starts anyway when time is up, and says so.
 */
async function waitForQuiet() {
  const limit = num(env.BENCH_WAIT_QUIET, 60) * 1000;
  const began = Date.now();
  for (;;) {
    const cores = [S.loadCpu, S.proxyCpu].filter((c) => c !== undefined);
    const b0 = cores.map(coreBusySeconds);
    await sleep(1_000);
    const busy = cores.map((c, i) => Math.round((coreBusySeconds(c) - b0[i]) * 100));
    if (busy.every((x) => x < 25)) return;
    if (Date.now() - began >= limit) {
      log(`machine still busy (${busy.join('%, ')}% on cores ${cores.join(', ')}); starting anyway`);
      return;
    }
    if (Date.now() - began < 1_500) log(`machine busy (${busy.join('%, ')}% on cores ${cores.join(', ')}); waiting up to ${limit / 1000} s for it to calm down`);
  }
}

/**
 * Mark-compacts (V8's full collections, the 5-25 ms stalls of the 16 KiB tail) a legate process has run
 * so far, from its own `legate_nodejs_gc_duration_seconds` metric; null for other targets or when the
 * admin port does not answer.
 */
async function markCompacts(t) {
  if (t.kind !== 'legate' || t.admin === undefined) return null;
  try {
    const m = /^legate_nodejs_gc_duration_seconds_count\{kind="major"\} (\d+)$/m.exec(await getText(t.admin, '/metrics'));
    return m === null ? 0 : Number(m[1]);
  } catch {
    return null;
  }
}

function getText(port, urlPath) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 5_000 }, (res) => {
      let s = '';
      res.setEncoding('utf8').on('data', (d) => (s += d)).on('end', () => resolve(s));
    }).on('error', reject);
  });
}

const mib = (bytes) => (bytes === null || bytes === undefined ? '—' : `${(bytes / 2 ** 20).toFixed(1)} MiB`);

/**
 * RSS of a fresh process: just started, after 2 s at S.rate, then holding
 * S.idleConnections idle keep-alive connections. `which` is 'legate' (full
 * chain) or 'bare' (the same measurement of bare http-proxy, for scale: the
 * part of legate's number that Node and the engine cost anyway).
 */
async function idleMemory(ctx, which) {
  const port = await freePort();
  let proc;
  if (which === 'legate') {
    ({ proc } = await startLegate('legate-mem', 'full', ctx, port));
  } else {
    proc = start('bare-mem', process.execPath,
      [...S.bareNodeFlags, path.join(ROOT, 'bench/bare-http-proxy.mjs'), '--port', String(port), '--upstream', `http://127.0.0.1:${ctx.upstreamPort}`],
      { cpu: S.proxyCpu, log: path.join(tmp, 'bare-mem.log'), cwd: ROOT, cgroup: proxyCgroup('bare-mem') });
    await waitForPort(port, { proc });
  }
  await sleep(1_000);
  const rssFresh = rssBytes([proc.pid]);
  // A little traffic first, so JIT-compiled code and the pools exist as they would in service.
  await openLoopRun({ port }, BODIES[0], 2, { warmup: 0, samples: false });
  await sleep(500);
  const rssWarm = rssBytes([proc.pid]);
  const sockets = await openIdleConnections(port, S.idleConnections);
  // One reading a second while the connections stay open. A burst like this grows V8's young generation,
  // and an idle process runs no collection that would shrink it: V8 gives it back when its memory reducer
  // runs, a timer every 8 s that starts its reducing collections once its estimate of the allocation rate
  // has fallen, and with no collection in between that estimate decays only with time (Node 20's V8 11.3:
  // 21-37 s after the burst here; Node 24's V8 started no reducer at all). The settled figure is read after
  // that and before legate's 65 s keep-alive timeout; the reading 2 s after the burst is reported beside it.
  const timeline = [];
  const opened = Date.now();
  for (let t = 1; t <= S.idleSettleSeconds; t++) {
    await sleep(Math.max(0, opened + t * 1_000 - Date.now()));
    timeline.push(round(rssBytes([proc.pid]) / 2 ** 20, 1));
  }
  const rssIdle = timeline[1] * 2 ** 20;
  const rssSettled = timeline[timeline.length - 1] * 2 ** 20;
  // When it came down: the first second from which RSS stayed within 1 MiB of the settled reading, if it fell by more than 3.
  const settledMiB = timeline[timeline.length - 1];
  let fellAtSeconds = null;
  if (timeline[1] - settledMiB > 3) {
    fellAtSeconds = timeline.length;
    while (fellAtSeconds > 1 && timeline[fellAtSeconds - 2] <= settledMiB + 1) fellAtSeconds--;
  }
  const settledByMapping = rssByMapping(proc.pid);
  const open = sockets.filter((s) => !s.destroyed).length;
  for (const s of sockets) s.destroy();
  await stop(proc);
  return { connections: open, settleSeconds: S.idleSettleSeconds, rssFresh, rssWarm, rssIdle, rssSettled, settledByMapping, idleMiB: settledMiB, idleBurstMiB: timeline[1], fellAtSeconds, rssTimelineMiB: timeline };
}

/** One line for the log: what idleMemory() read. */
function idleSummary(m) {
  const fell = m.fellAtSeconds === null ? '' : ` (came down ${m.fellAtSeconds} s after opening them)`;
  return `${mib(m.rssFresh)} fresh, ${mib(m.rssWarm)} after warm-up, ${mib(m.rssIdle)} 2 s after opening ${S.idleConnections} idle connections, ${mib(m.rssSettled)} ${m.settleSeconds} s after${fell}, ${m.connections} still open`;
}

async function soakRun(ctx) {
  const port = await freePort();
  const { proc, accessLog } = await startLegate('legate-soak', 'full', ctx, port);
  const samples = [];
  const began = performance.now();
  const timer = setInterval(() => samples.push({ t: round((performance.now() - began) / 1000, 1), rss: rssBytes([proc.pid]) }), 1_000);
  const gen = await openLoopRun({ port }, BODIES[0], S.soakSeconds, { warmup: S.soakWarmupSeconds, samples: false, window: 10 });
  clearInterval(timer);
  const accessLogBytes = existsSync(accessLog) ? statSync(accessLog).size : 0;
  await stop(proc);
  // "Start" is the end of the warm-up: JIT, pools and buffers have settled by then. RSS saws up and
  // down with each GC, so start and end are the means of the first and last tenth of the soak (≥ 5 samples).
  const afterWarm = samples.filter((s) => s.t >= S.soakWarmupSeconds);
  const k = Math.max(5, Math.round(afterWarm.length / 10));
  const mean = (xs) => (xs.length === 0 ? null : xs.reduce((a, x) => a + x.rss, 0) / xs.length);
  const rssStart = mean(afterWarm.slice(0, k));
  const rssEnd = mean(afterWarm.slice(-k));
  const rssMax = Math.max(...afterWarm.map((s) => s.rss));
  return {
    seconds: S.soakSeconds,
    rate: S.rate,
    rssStart,
    rssEnd,
    rssMax,
    growthPct: round((ratio(rssEnd, rssStart) - 1) * 100, 1),
    // Every 5th second is enough to see a trend in the JSON.
    rssSeries: samples.filter((_, i) => i % 5 === 0).map((s) => ({ t: s.t, mib: round(s.rss / 2 ** 20, 1) })),
    latency: gen.latency,
    windows: gen.windows,
    errors: gen.errors + gen.non2xx + gen.unfinished,
    accessLogBytes,
  };
}

// ---------------------------------------------------------------- results

function assemble({ machine, startedAt, targets, failed, throughputRuns, latencyRuns, rssAfterLoad, legateChecks, idle, soak }) {
  const ids = targets.map((t) => t.id);
  const throughput = {};
  const latency = {};
  for (const b of BODIES) {
    throughput[b.id] = {};
    for (const id of ids) {
      const runs = throughputRuns[b.id]?.[id] ?? [];
      throughput[b.id][id] = {
        rps: round(median(runs.map((x) => x.rps)), 0),
        cpuUsPerRequest: round(median(runs.map((x) => x.cpuUsPerRequest)), 1),
        proxyCorePct: round(median(runs.map((x) => x.proxyCorePct)), 0),
        upstreamCpuUsPerRequest: round(median(runs.map((x) => x.upstreamCpuUsPerRequest)), 1),
        othersOnProxyCorePct: round(median(runs.map((x) => x.othersOnProxyCorePct)), 0),
        errors: runs.reduce((a, x) => a + x.errors, 0),
        runs: runs.map(({ wrkLatencyUs: _l, ...rest }) => rest),
      };
    }
    // Ratios against the three references, per target.
    for (const id of ids) {
      const me = throughput[b.id][id];
      me.vsDirect = round(ratio(me.rps, throughput[b.id].direct?.rps), 3);
      me.vsNginx = round(ratio(me.rps, throughput[b.id].nginx?.rps), 3);
      me.vsBare = round(ratio(me.rps, throughput[b.id].bare?.rps), 3);
      me.cpuVsNginx = round(ratio(me.cpuUsPerRequest, throughput[b.id].nginx?.cpuUsPerRequest), 2);
      me.cpuVsBare = round(ratio(me.cpuUsPerRequest, throughput[b.id].bare?.cpuUsPerRequest), 2);
    }

    latency[b.id] = {};
    for (const id of ids) {
      const runs = latencyRuns[b.id]?.[id] ?? [];
      // Percentiles of all repeats' samples pooled: 5 × 3,000 samples by default pin p99.9 far better than a median of five noisy p99.9s.
      const pooled = runs.flatMap((x) => x.samplesUs ?? []).sort((a, c) => a - c);
      const q = (p) => round((percentile(pooled, p) ?? NaN) / 1000, 3);
      latency[b.id][id] = {
        samples: pooled.length,
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: q(1),
        perRepeat: runs.map((x) => ({
          p50: x.latency.p50,
          p99: x.latency.p99,
          p999: x.latency.p999,
          serviceP50: x.service.p50,
          // How late the generator itself sent (p99): the floor under every target's tail.
          lateP99: x.late.p99,
          othersOnProxyCorePct: x.othersOnProxyCorePct,
          markCompacts: x.markCompacts ?? null,
          cpuUsPerRequest: x.cpuUsPerRequest ?? null,
        })),
        // The proxy's CPU per request at this fixed rate, median of repeats (null for direct).
        cpuUsPerRequest: runs.length > 0 && runs.every((x) => typeof x.cpuUsPerRequest === 'number') ? round(median(runs.map((x) => x.cpuUsPerRequest)), 1) : null,
        errors: runs.reduce((a, x) => a + x.errors + x.non2xx + x.unfinished, 0),
        // legate targets only: V8 mark-compacts in the process during these runs (their stalls are the tail).
        markCompacts: runs.length > 0 && runs.every((x) => typeof x.markCompacts === 'number') ? runs.reduce((a, x) => a + x.markCompacts, 0) : null,
      };
    }
    const d = latency[b.id].direct;
    for (const id of ids) {
      const me = latency[b.id][id];
      me.addedUs = id === 'direct' || d === undefined || d.p50 === null || me.p50 === null ? null : {
        p50: round((me.p50 - d.p50) * 1000, 0),
        p99: round((me.p99 - d.p99) * 1000, 0),
        p999: round((me.p999 - d.p999) * 1000, 0),
      };
    }
  }

  const checks = [];
  const check = (name, value, target, ok, note) => checks.push({ name, value, target, ok, ...(note ? { note } : {}) });
  for (const b of BODIES) {
    const tp = throughput[b.id];
    if (tp['legate-full'] && tp.bare) {
      // Repeat i of every target ran within seconds of the others': the ratio per repeat shows how far the noise moves it.
      const paired = tp['legate-full'].runs.map((r, i) => round(ratio(r.rps, tp.bare.runs[i]?.rps), 2)).filter((v) => v !== null);
      check(`full chain req/s ÷ bare http-proxy, ${b.label}`, tp['legate-full'].vsBare, '≥ 1.0', tp['legate-full'].vsBare >= 1.0,
        paired.length > 1 ? `repeat by repeat: ${paired.join(', ')}` : undefined);
    }
    if (tp['legate-mtls'] && tp['legate-plain']) {
      const v = round(ratio(tp['legate-mtls'].rps, tp['legate-plain'].rps), 3);
      // nginx's own ratio, when measured, says what TLS costs a proxy here.
      const ref = tp['nginx-mtls'] && tp.nginx ? round(ratio(tp['nginx-mtls'].rps, tp.nginx.rps), 3) : undefined;
      const cpuRef = tp['nginx-mtls'] && tp.nginx ? round(ratio(tp.nginx.cpuUsPerRequest, tp['nginx-mtls'].cpuUsPerRequest), 3) : undefined;
      // The same ratio by CPU per request at the latency runs' fixed rate, legate's and nginx's.
      const lat = latency[b.id];
      const atRate = (a, bb) => (lat[a]?.cpuUsPerRequest && lat[bb]?.cpuUsPerRequest ? round(ratio(lat[bb].cpuUsPerRequest, lat[a].cpuUsPerRequest), 3) : undefined);
      const legateAtRate = atRate('legate-mtls', 'legate-plain');
      const nginxAtRate = atRate('nginx-mtls', 'nginx');
      const notes = [
        ref === undefined ? null : `nginx in this run: ${ref} by req/s, ${cpuRef} by CPU per request`,
        legateAtRate === undefined ? null : `by CPU per request at ${S.rate} req/s: legate ${legateAtRate}${nginxAtRate === undefined ? '' : `, nginx ${nginxAtRate}`}`,
      ].filter(Boolean);
      check(`mTLS route req/s ÷ plain route, ${b.label}`, v, '≥ 0.9', v >= 0.9, notes.length > 0 ? notes.join('; ') : undefined);
    }
    const lat = latency[b.id];
    if (lat['legate-full']?.addedUs && lat.bare?.addedUs) {
      for (const p of ['p50', 'p99']) {
        const mine = lat['legate-full'].addedUs[p];
        const floor = lat.bare.addedUs[p];
        check(`full chain added ${p} at ${S.rate} req/s, ${b.label} (µs)`, mine, `≤ bare http-proxy's (${floor} µs)`, mine <= floor);
      }
    }
  }
  if (idle) {
    // All of them still open, or the figure is not what it says.
    const allOpen = idle.connections === S.idleConnections;
    check(`RSS holding ${S.idleConnections} idle keep-alive connections, ${idle.settleSeconds} s after opening them (MiB)`, idle.idleMiB, '< 80', idle.idleMiB < 80 && allOpen,
      [allOpen ? null : `only ${idle.connections} were still open`, `${idle.idleBurstMiB} MiB 2 s after opening them`].filter(Boolean).join('; '));
  }
  // One-sided: the check is for growth (a leak); RSS falling as the heap settles is fine.
  if (soak) check(`RSS growth over a ${soak.seconds} s soak at ${soak.rate} req/s (%)`, soak.growthPct, '≤ 5', soak.growthPct <= 5);
  const fullLog = legateChecks['legate-full'];
  const notes = [];
  if (fullLog && fullLog.accessLogBytes === 0) notes.push('legate-full wrote no access log lines: the access-log step is not in this build, so the full chain measured here does less than it will.');
  if (fullLog && fullLog.metricsHasRequestCounter === false) notes.push('legate-full /metrics has no legate_requests counter: metrics are not recorded in this build.');
  for (const [id, why] of Object.entries(failed)) notes.push(`${id} was left out: ${why}`);

  return {
    schema: 1,
    startedAt: startedAt.toISOString(),
    durationSeconds: Math.round((Date.now() - t0) / 1000),
    command: commandLine(),
    settings: { ...S, bodies: BODIES.map(({ id, bytes }) => ({ id, bytes })) },
    noisyRunsRepeated: redone,
    machine: { ...machine, loadAverageAtEnd: os.loadavg().map((x) => round(x, 2)) },
    targets: Object.fromEntries(TARGET_DEFS.map((d) => [d.id, { label: d.label, measured: ids.includes(d.id), ...(failed[d.id] ? { error: failed[d.id] } : {}) }])),
    throughput,
    latency,
    memory: {
      rssAfterLoadMiB: Object.fromEntries(Object.entries(rssAfterLoad).map(([k, v]) => [k, round(v / 2 ** 20, 1)])),
      idle,
      soak,
    },
    legate: legateChecks,
    checks,
    notes,
  };
}

function commandLine() {
  const vars = Object.entries(env)
    // BENCH_TMP is run.sh's own plumbing, not a setting.
    .filter(([k]) => k.startsWith('BENCH_') && k !== 'BENCH_TMP')
    .map(([k, v]) => `${k}=${v} `)
    .join('');
  return `${vars}npm run bench${PROFILE ? ' -- --profile' : ''}`;
}

// ---------------------------------------------------------------- markdown

const fmt = (x, digits = 0) => (x === null || x === undefined ? '—' : Number(x).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }));
const fmtRatio = (x) => (x === null || x === undefined ? '—' : `${x.toFixed(2)}×`);
const fmtAdded = (x) => (x === null || x === undefined ? '—' : `${x >= 0 ? '+' : '−'}${Math.abs(x)}`);

function renderMarkdown(r) {
  const L = [];
  const ids = Object.keys(r.throughput.small ?? {});
  const label = (id) => r.targets[id]?.label ?? id;
  L.push(`Run ${r.startedAt} (${r.durationSeconds} s${r.settings.quick ? ', **quick smoke run**' : ''}). ` +
    `Medians of ${r.settings.repeats} interleaved repeat${r.settings.repeats === 1 ? '' : 's'}.`);
  L.push('');
  L.push(`### Throughput, closed loop (wrk, 1 thread, ${r.settings.connections} connections, ${r.settings.seconds} s per run)`);
  L.push('');
  L.push('CPU is the proxy process\'s user+system time per request, all threads; "core" is how busy its pinned core was (≈100% = the proxy was the limit).');
  L.push('');
  for (const b of BODIES) {
    L.push(`**${b.label}**`);
    L.push('');
    L.push('| target | req/s | × direct | × nginx | × bare http-proxy | CPU µs/req | core | CPU × nginx | CPU × bare |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const id of ids) {
      const t = r.throughput[b.id][id];
      const warn = t.errors > 0 ? ` ⚠ ${t.errors} errors` : '';
      L.push(`| ${label(id)} | ${fmt(t.rps)}${warn} | ${fmtRatio(t.vsDirect)} | ${fmtRatio(t.vsNginx)} | ${fmtRatio(t.vsBare)} | ${fmt(t.cpuUsPerRequest, 1)} | ${t.proxyCorePct === null ? '—' : `${t.proxyCorePct}%`} | ${fmtRatio(t.cpuVsNginx)} | ${fmtRatio(t.cpuVsBare)} |`);
    }
    L.push('');
  }
  // Direct runs are left out: with core 1 idle, the kernel moves other work onto it, which disturbs nothing of ours.
  const others = Object.values(r.throughput)
    .flatMap((byTarget) => Object.entries(byTarget).filter(([id]) => id !== 'direct').flatMap(([, t]) => t.runs.map((x) => x.othersOnProxyCorePct)))
    .filter((x) => x !== null);
  if (others.length > 0) {
    const med = median(others);
    L.push(`Noise gauge: other processes used a median ${med}% (max ${Math.max(...others)}%) of the proxy's core during these runs; near 0 is a clean run.` +
      (r.noisyRunsRepeated > 0 ? ` ${r.noisyRunsRepeated} disturbed run${r.noisyRunsRepeated === 1 ? ' was' : 's were'} measured again.` : '') +
      (med > NOISY_PCT ? ` **This run was noisy: the proxies shared their core with other work, so even the ratios are unreliable.**` : ''));
    L.push('');
  }
  L.push(`### Latency at a fixed ${fmt(r.settings.rate)} req/s (open loop, from the scheduled send time; ${r.settings.latencySeconds} s per run, repeats pooled)`);
  L.push('');
  if (r.settings.latencySeconds > 0) {
    L.push('| target | small p50 / p99 / p99.9 (ms) | small added over direct (µs) | 16 KiB p50 / p99 / p99.9 (ms) | 16 KiB added over direct (µs) | CPU µs/req, small / 16 KiB |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: |');
  } else {
    L.push('Skipped (BENCH_LATENCY_SECONDS=0).');
  }
  for (const id of r.settings.latencySeconds > 0 ? ids : []) {
    const cells = BODIES.map((b) => {
      const t = r.latency[b.id][id];
      const abs = `${fmt(t.p50, 3)} / ${fmt(t.p99, 3)} / ${fmt(t.p999, 3)}${t.errors > 0 ? ` ⚠ ${t.errors} errors` : ''}`;
      const added = t.addedUs === null ? '—' : `${fmtAdded(t.addedUs.p50)} / ${fmtAdded(t.addedUs.p99)} / ${fmtAdded(t.addedUs.p999)}`;
      return `${abs} | ${added}`;
    });
    // Results files from before this column have no cpuUsPerRequest: a dash, as for direct.
    const cpu = BODIES.map((b) => r.latency[b.id][id]?.cpuUsPerRequest);
    const cpuCell = cpu.every((x) => typeof x === 'number') ? cpu.map((x) => fmt(x, 1)).join(' / ') : '—';
    L.push(`| ${label(id)} | ${cells.join(' | ')} | ${cpuCell} |`);
  }
  if (r.settings.latencySeconds > 0) {
    const lat = Object.values(r.latency).flatMap((byTarget) => Object.values(byTarget).flatMap((t) => t.perRepeat));
    const late = lat.map((x) => x.lateP99).filter((x) => typeof x === 'number');
    const noise = lat.map((x) => x.othersOnProxyCorePct).filter((x) => typeof x === 'number');
    L.push('');
    L.push('CPU is the proxy process\'s user+system time over the whole run (warm-up included) per request sent, median of repeats: what a request costs at a rate the proxy keeps up with, where closed-loop CPU (above) is that of a saturated proxy serving many requests per event-loop turn.');
    L.push('');
    L.push(`The generator itself sent its requests up to ${fmt(median(late), 1)} ms late at p99 (median of runs; it shares core 0 with the upstream), ` +
      `which is the floor under every p99 here. Others used a median ${fmt(median(noise))}% (max ${fmt(noise.length ? Math.max(...noise) : null)}%) of the proxy's core during these runs.`);
    const gcs = ids.filter((id) => BODIES.every((b) => typeof r.latency[b.id][id]?.markCompacts === 'number'));
    if (gcs.length > 0) {
      L.push('');
      L.push(`V8 mark-compacts in the legate processes during these runs (each a stall of 5–25 ms here; the process's own \`legate_nodejs_gc_duration_seconds\`), small / 16 KiB, all repeats: ` +
        gcs.map((id) => `${label(id)} ${BODIES.map((b) => r.latency[b.id][id].markCompacts).join(' / ')}`).join('; ') + '.' +
        (gcs.some((id) => typeof r.legate?.[id]?.markCompactsInThroughput === 'number')
          ? ` Before them, during the throughput runs: ${gcs.filter((id) => typeof r.legate?.[id]?.markCompactsInThroughput === 'number').map((id) => `${label(id)} ${r.legate[id].markCompactsInThroughput}`).join('; ')}.`
          : ''));
    }
  }
  L.push('');
  L.push('### Memory (RSS; a fresh process for each measurement)');
  L.push('');
  L.push('| measure | legate, full chain | bare http-proxy, for scale |');
  L.push('| --- | ---: | ---: |');
  const m = r.memory;
  if (m.idle) {
    const b = m.idle.bare;
    L.push(`| just started | ${mib(m.idle.rssFresh)} | ${mib(b?.rssFresh)} |`);
    L.push(`| after 2 s at ${fmt(r.settings.rate)} req/s | ${mib(m.idle.rssWarm)} | ${mib(b?.rssWarm)} |`);
    const fell = (x) => ((x?.fellAtSeconds ?? null) === null ? '' : ` (came down at ${x.fellAtSeconds} s)`);
    L.push(`| with ${fmt(r.settings.idleConnections)} idle keep-alive connections, 2 s after opening them | ${mib(m.idle.rssIdle)} | ${mib(b?.rssIdle)} |`);
    if (m.idle.rssSettled !== undefined) L.push(`| the same connections, ${m.idle.settleSeconds} s after opening them (${fmt(m.idle.connections)} still open) | ${mib(m.idle.rssSettled)}${fell(m.idle)} | ${mib(b?.rssSettled)}${fell(b)} |`);
    const mine = m.idle.settledByMapping;
    if (mine) {
      const theirs = b?.settledByMapping ?? undefined;
      const parts = [
        ['node executable (code; shared with other node processes)', 'binary'],
        ['V8 heap pages (256 KiB mappings)', 'v8Heap'],
        ['other anonymous memory (WebAssembly, V8 code space, arenas, stacks)', 'otherAnonymous'],
        ['malloc heap', 'malloc'],
        ['other mapped files', 'files'],
      ];
      for (const [label, key] of parts) L.push(`| … of which ${label} | ${mib(mine[key])} | ${mib(theirs?.[key])} |`);
    }
  }
  if (m.soak) {
    L.push(`| soak at ${fmt(m.soak.rate)} req/s: start (mean of its first tenth, after a ${r.settings.soakWarmupSeconds} s warm-up) | ${mib(m.soak.rssStart)} | |`);
    L.push(`| soak: end (mean of its last tenth, ${m.soak.seconds} s in) | ${mib(m.soak.rssEnd)} (${m.soak.growthPct > 0 ? '+' : ''}${m.soak.growthPct}%) | |`);
    L.push(`| soak: highest | ${mib(m.soak.rssMax)} | |`);
  } else {
    L.push('| soak | skipped | |');
  }
  L.push('');
  L.push('### Against the targets of issue 8');
  L.push('');
  L.push('| check | measured | target | |');
  L.push('| --- | ---: | --- | --- |');
  for (const c of r.checks) L.push(`| ${c.name} | ${c.value === null ? '—' : c.value} | ${c.target} | ${c.ok ? 'met' : '**not met**'}${c.note ? ` (${c.note})` : ''} |`);
  L.push('');
  if (r.notes.length > 0) {
    for (const n of r.notes) L.push(`- ${n}`);
    L.push('');
  }
  const mc = r.machine;
  L.push('### Machine and command');
  L.push('');
  L.push(`- ${mc.cpuModel}, ${mc.cores} cores, ${mc.memoryGiB} GiB; ${mc.kernel}`);
  L.push(`- Node ${mc.node}, ${mc.nginx ?? 'nginx —'}, ${mc.wrk ?? 'wrk —'}, ${mc.openssl ?? 'openssl —'}`);
  L.push(`- legate ${mc.legateCommit ?? '?'}${mc.legateTreeDirty ? ' with uncommitted changes in the tree' : ''}`);
  L.push(`- load average at start ${mc.loadAverageAtStart.join(' ')}, at end ${mc.loadAverageAtEnd.join(' ')} (other work on the machine shows here)`);
  L.push(`- pinning: upstream, load generator and harness on core ${r.settings.loadCpu ?? '(unpinned)'}, the proxy under test alone on core ${r.settings.proxyCpu ?? '(unpinned)'}`);
  const flags = r.settings.legateNodeFlags ?? [];
  L.push(`- legate's Node flags: ${flags.length === 0 ? 'none' : flags.map((f) => `\`${f}\``).join(' ')} (the Docker image's NODE_OPTIONS and ENTRYPOINT, plus BENCH_NODE_ARGS)`);
  L.push(`- memory limit: ${typeof r.settings.memoryLimitMiB === 'number' ? `each legate and bare http-proxy process in a memory cgroup of ${r.settings.memoryLimitMiB} MiB (BENCH_MEMORY_LIMIT), as a container limit would put it` : 'none (BENCH_MEMORY_LIMIT unset): Node sizes V8\'s heap from the machine\'s memory'}`);
  const bareFlags = r.settings.bareNodeFlags ?? [];
  L.push(`- bare http-proxy's Node flags: ${bareFlags.length === 0 ? 'none' : bareFlags.map((f) => `\`${f}\``).join(' ')} (BENCH_BARE_NODE_ARGS)`);
  L.push('');
  L.push('```sh');
  L.push(r.command);
  L.push('```');
  return L.join('\n');
}

const START = '<!-- bench:results:start (generated by npm run bench; edits inside are overwritten) -->';
const END = '<!-- bench:results:end -->';

function writeDocs(md) {
  const block = `${START}\n${md}\n${END}`;
  let doc = existsSync(DOCS) ? readFileSync(DOCS, 'utf8') : '# Benchmarks\n\n## Latest results\n\n';
  const a = doc.indexOf(START);
  const b = doc.indexOf(END);
  doc = a !== -1 && b > a ? doc.slice(0, a) + block + doc.slice(b + END.length) : `${doc.trimEnd()}\n\n${block}\n`;
  mkdirSync(path.dirname(DOCS), { recursive: true });
  writeFileSync(DOCS, doc);
}

// ---------------------------------------------------------------- profile mode

/**
 * `npm run bench -- --profile`: one proxy under wrk load with
 * `node --cpu-prof`, then the top self-time functions (with their callers)
 * of the loaded window only, startup excluded. The .cpuprofile, a
 * folded-stacks file (flame graph input) and the summary stay in
 * BENCH_PROFILE_DIR (default: a new /tmp/legate-profile-* dir).
 *   BENCH_PROFILE_TARGET=legate-full   or legate-plain, legate-mtls, bare
 *   BENCH_PROFILE_SECONDS=10           load duration
 *   BENCH_PROFILE_BODY=small           or 16k
 *   BENCH_PROFILE_KIND=cpu             or alloc: bytes allocated per request by function instead
 *                                      (V8's sampling heap profiler, freed objects included; allocProfile)
 */
async function profileMode() {
  tmp = makeTmp();
  const outDir = env.BENCH_PROFILE_DIR ?? mkdtempSync(path.join(os.tmpdir(), 'legate-profile-'));
  mkdirSync(outDir, { recursive: true });
  const seconds = Math.max(1, Math.round(num(env.BENCH_PROFILE_SECONDS, 10)));
  const body = BODIES.find((b) => b.id === (env.BENCH_PROFILE_BODY ?? 'small')) ?? BODIES[0];
  const def = TARGET_DEFS.find((d) => d.id === (env.BENCH_PROFILE_TARGET ?? 'legate-full'));
  if (def === undefined || (def.kind !== 'legate' && def.kind !== 'bare')) throw new Error('BENCH_PROFILE_TARGET must be legate-full, legate-plain, legate-mtls, bare, or candidate-NAME (with BENCH_CANDIDATE)');
  const certs = path.join(tmp, 'certs');
  makeCerts(certs);
  const ctx = { upstreamPort: await freePort(), httpsPort: await freePort(), certs };
  ctx.upstream = start('upstream', process.execPath,
    [path.join(ROOT, 'bench/upstream.mjs'), '--http', String(ctx.upstreamPort), '--https', String(ctx.httpsPort), '--certs', certs],
    { cpu: S.loadCpu, log: path.join(tmp, 'upstream.log'), cwd: ROOT });
  await waitForPort(ctx.upstreamPort, { proc: ctx.upstream });
  await waitForPort(ctx.httpsPort, { proc: ctx.upstream });
  const port = await freePort();
  const before = new Set(readdirSync(outDir));
  const alloc = PROFILE_KIND === 'alloc';
  const allocFile = path.join(outDir, `${def.id}-${body.id}-${new Date().toISOString().replace(/[:.]/g, '-')}.heapprofile`);
  // 250 µs sampling: finer than the 1 ms default, still cheap next to a request.
  const profArgs = alloc
    ? ['--import', path.join(ROOT, 'bench/alloc-probe.mjs')]
    : ['--cpu-prof', '--cpu-prof-dir', outDir, '--cpu-prof-interval', '250'];
  let proc;
  if (def.kind === 'legate') {
    ({ proc } = await startLegate(`${def.id}-profile`, def.config, ctx, port, profArgs, def.cli, alloc ? { BENCH_ALLOC_OUT: allocFile } : {}));
  } else {
    proc = start('bare-profile', process.execPath,
      [...S.bareNodeFlags, ...profArgs, path.join(ROOT, 'bench/bare-http-proxy.mjs'), '--port', String(port), '--upstream', `http://127.0.0.1:${ctx.upstreamPort}`],
      { cpu: S.proxyCpu, log: path.join(tmp, 'bare-profile.log'), cwd: ROOT, env: alloc ? { ...env, BENCH_ALLOC_OUT: allocFile } : env });
    await waitForPort(port, { proc });
  }
  const t = { id: def.id, kind: def.kind, port, pids: () => [proc.pid] };
  await verify(t);
  if (alloc) {
    await allocProfile(t, proc, body, seconds, ctx, allocFile);
    return;
  }
  log(`profiling ${def.id}, ${body.label}, ${seconds} s under wrk -c${S.connections}`);
  await wrkRun(t, body, 2, ctx);
  // V8 stamps samples with the monotonic clock process.hrtime() reads: keep only this window.
  const fromUs = Number(process.hrtime.bigint() / 1000n);
  const m = await wrkRun(t, body, seconds, ctx);
  const toUs = Number(process.hrtime.bigint() / 1000n);
  log(`${m.rps} req/s, ${m.cpuUsPerRequest} µs CPU/req (with the profiler on, both are worse than without)`);
  // SIGTERM: the process exits normally, which is when V8 writes the profile.
  await stop(proc, { graceMs: 20_000 });
  await stopAll();
  const file = readdirSync(outDir).find((f) => f.endsWith('.cpuprofile') && !before.has(f));
  if (file === undefined) throw new Error(`no .cpuprofile was written into ${outDir} (did the process exit cleanly? see its log)`);
  const full = path.join(outDir, file);
  const s = summarise(JSON.parse(readFileSync(full, 'utf8')), { top: 25, fromUs, toUs });
  const folded = full.replace(/\.cpuprofile$/, '.folded');
  writeFileSync(folded, s.folded());
  const summaryFile = full.replace(/\.cpuprofile$/, '.summary.txt');
  const title = `${def.label}, ${body.label}, ${m.rps} req/s, ${m.cpuUsPerRequest} µs CPU/req under the profiler; loaded window only`;
  const text = `${formatSummary(s, title, { callers: true })}\n`;
  writeFileSync(summaryFile, text);
  process.stdout.write(`\n${text}\nprofile: ${full}\nfolded stacks (flame graph input): ${folded}\nsummary: ${summaryFile}\n`);
}

/**
 * BENCH_PROFILE_KIND=alloc: what the proxy allocates per request, by
 * function. bench/alloc-probe.mjs samples every allocation (freed objects
 * included) between two SIGUSR2s sent around one wrk run after a warm-up.
 */
async function allocProfile(t, proc, body, seconds, ctx, file) {
  log(`allocation profile of ${t.id}, ${body.label}, ${seconds} s under wrk -c${S.connections}`);
  await wrkRun(t, body, 2, ctx);
  const appears = async (f, what) => {
    const deadline = Date.now() + 30_000;
    while (!existsSync(f)) {
      if (Date.now() > deadline) throw new Error(`${what}: no ${f} within 30 s (see ${proc.log})`);
      await sleep(50);
    }
  };
  process.kill(proc.pid, 'SIGUSR2');
  await appears(`${file}.started`, 'the allocation sampler did not start');
  rmSync(`${file}.started`);
  const m = await wrkRun(t, body, seconds, ctx);
  process.kill(proc.pid, 'SIGUSR2');
  await appears(file, 'no allocation profile was written');
  await stop(proc, { graceMs: 20_000 });
  await stopAll();
  const s = summariseAlloc(JSON.parse(readFileSync(file, 'utf8')), { requests: m.requests, top: 25 });
  const title = `${TARGET_DEFS.find((d) => d.id === t.id)?.label ?? t.id}, ${body.label}, ${m.requests} requests at ${m.rps} req/s under the profiler`;
  const text = `${formatAllocSummary(s, title)}\n`;
  const summaryFile = file.replace(/\.heapprofile$/, '.summary.txt');
  writeFileSync(summaryFile, text);
  process.stdout.write(`\n${text}\nprofile: ${file} (open in Chrome DevTools, Memory tab, or node bench/alloc-summary.mjs)\nsummary: ${summaryFile}\n`);
}

/** `node bench/bench.mjs --render [FILE]`: rewrites the docs section from a results file (default latest.json). */
function renderMode() {
  const i = process.argv.indexOf('--render');
  const file = process.argv[i + 1] ?? path.join(RESULTS, 'latest.json');
  const results = JSON.parse(readFileSync(file, 'utf8'));
  const md = renderMarkdown(results);
  writeDocs(md);
  process.stdout.write(md + '\n');
  log(`rewrote the results section of ${path.relative(ROOT, DOCS)} from ${path.relative(ROOT, file)}`);
}

if (process.argv.includes('--render')) {
  renderMode();
} else (PROFILE ? profileMode() : main()).catch(async (e) => {
  // A measurement cut short by our own stop signal is not a failure worth a stack trace.
  if (interrupted) return;
  log(`FAILED: ${e.stack ?? e.message}`);
  await stopAll();
  process.exit(1);
});
