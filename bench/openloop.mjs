/**
 * Open-loop load generator: sends GET requests on a fixed schedule (e.g.
 * 1,000 per second) over a pool of keep-alive connections, whatever the
 * server does, and measures each request's latency from its *scheduled* send
 * time. A slow response therefore delays no later request's schedule and is
 * not hidden (no coordinated omission): if the server stalls for 50 ms, the
 * ~50 requests due meanwhile all count their wait. Debian has no wrk2; this
 * does its job for the rates a sidecar sees.
 *
 * Usage:
 *   node bench/openloop.mjs --url http://127.0.0.1:18080/small \
 *     [--rate 1000] [--seconds 5] [--warmup 1] [--connections 20] [--samples] [--window 10] [--slow 8]
 *
 * Prints one JSON line: counts, and latency percentiles in ms —
 *   latency: completion − scheduled time (the number to report),
 *   service: completion − actual send (what a closed-loop tool would say),
 *   late:    actual send − scheduled time (the generator's own precision).
 * The first --warmup seconds are sent but not counted. --samples adds the
 * counted latencies (µs, integers) so runs can be pooled; --window S adds
 * p50/p99 per S-second window (for soaks); --slow MS adds every counted
 * request slower than MS as [scheduled time (epoch ms), latency, lateness]
 * (BENCH_STALLS=1 lines them up with what the proxy was doing).
 */
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { setTimeout } from 'node:timers';
import { URL } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    rate: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    connections: { type: 'string', default: '20' },
    timeout: { type: 'string', default: '10' },
    samples: { type: 'boolean', default: false },
    window: { type: 'string' },
    slow: { type: 'string' },
  },
});
if (values.url === undefined) {
  process.stderr.write('usage: node bench/openloop.mjs --url URL [--rate N] [--seconds S] [--warmup S] [--connections C]\n');
  process.exit(2);
}
const url = new URL(values.url);
const rate = Number(values.rate);
const seconds = Number(values.seconds);
const warmup = Number(values.warmup);
const connections = Number(values.connections);
const timeoutMs = Number(values.timeout) * 1000;
const windowS = values.window === undefined ? undefined : Number(values.window);
const slowMs = values.slow === undefined ? undefined : Number(values.slow);
/** At most this many slow requests are listed. */
const SLOW_LIMIT = 5_000;

const intervalMs = 1000 / rate;
const skip = Math.round(rate * warmup);
const total = skip + Math.round(rate * seconds);

const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
const nowAbs = () => performance.timeOrigin + performance.now();

// Per request i: scheduled, sent and finished times (absolute ms). NaN = not (yet) finished.
const startAbs = nowAbs() + 50; // leave the worker time to start
const sentAt = new Float64Array(total);
const doneAt = new Float64Array(total).fill(NaN);
let settled = 0;
let errors = 0;
let non2xx = 0;
let bytes = 0;
const errorKinds = new Map();

function settle() {
  settled++;
  if (settled === total) finish();
}

function fire(i) {
  sentAt[i] = nowAbs();
  const req = http.request(
    { agent, host: url.hostname, port: url.port, path: url.pathname + url.search, method: 'GET' },
    (res) => {
      if (res.statusCode === undefined || res.statusCode < 200 || res.statusCode > 299) non2xx++;
      res.on('data', (chunk) => (bytes += chunk.length));
      res.on('end', () => {
        doneAt[i] = nowAbs();
        settle();
      });
      res.on('error', () => undefined);
    },
  );
  req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
  req.on('error', (e) => {
    errors++;
    const kind = /** @type {NodeJS.ErrnoException} */ (e).code ?? e.message;
    errorKinds.set(kind, (errorKinds.get(kind) ?? 0) + 1);
    settle();
  });
  req.end();
}

/** Nearest-rank percentile of a sorted array. */
function pct(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

function summary(values) {
  const s = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of s) sum += v;
  const r = (v) => (v === null ? null : Math.round(v * 1000) / 1000);
  return {
    n: s.length,
    mean: r(s.length ? sum / s.length : null),
    p50: r(pct(s, 0.5)),
    p90: r(pct(s, 0.9)),
    p99: r(pct(s, 0.99)),
    p999: r(pct(s, 0.999)),
    max: r(s.length ? s[s.length - 1] : null),
  };
}

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  const latency = [];
  const service = [];
  const late = [];
  let unfinished = 0;
  for (let i = skip; i < total; i++) {
    const scheduled = startAbs + i * intervalMs;
    if (Number.isNaN(doneAt[i])) {
      // Errors and requests still open at the deadline: counted apart, not as latencies.
      unfinished++;
      continue;
    }
    latency.push(doneAt[i] - scheduled);
    service.push(doneAt[i] - sentAt[i]);
    late.push(sentAt[i] - scheduled);
  }
  const out = {
    url: values.url,
    rate,
    seconds,
    warmup,
    connections,
    // Every request sent, warm-up included: what the server did in the run's time.
    sent: total,
    counted: total - skip,
    ok: latency.length,
    unfinished,
    errors,
    errorKinds: Object.fromEntries(errorKinds),
    non2xx,
    bytesPerResponse: settled > 0 ? Math.round(bytes / Math.max(1, settled - errors)) : 0,
    latency: summary(latency),
    service: summary(service),
    late: summary(late),
  };
  if (windowS !== undefined) {
    const per = Math.round(rate * windowS);
    out.windows = [];
    for (let from = skip; from < total; from += per) {
      const w = [];
      for (let i = from; i < Math.min(total, from + per); i++) {
        if (!Number.isNaN(doneAt[i])) w.push(doneAt[i] - (startAbs + i * intervalMs));
      }
      const s = summary(w);
      out.windows.push({ fromS: (from - skip) / rate, p50: s.p50, p99: s.p99, max: s.max });
    }
  }
  if (slowMs !== undefined) {
    out.startedAt = startAbs + skip * intervalMs;
    out.slow = [];
    for (let i = skip; i < total && out.slow.length < SLOW_LIMIT; i++) {
      const scheduled = startAbs + i * intervalMs;
      const took = doneAt[i] - scheduled;
      if (took > slowMs) out.slow.push([Math.round(scheduled * 10) / 10, Math.round(took * 10) / 10, Math.round((sentAt[i] - scheduled) * 10) / 10]);
    }
  }
  if (values.samples) out.samplesUs = latency.map((v) => Math.round(v * 1000));
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

const worker = new Worker(new URL('./lib/metronome.mjs', import.meta.url), {
  workerData: { startAbs, intervalMs, count: total },
});
worker.on('message', fire);
worker.on('error', (e) => {
  process.stderr.write(`metronome failed: ${e.message}\n`);
  process.exit(1);
});
// Whatever is still open this long after the last scheduled send counts as unfinished.
setTimeout(finish, total * intervalMs + 50 + timeoutMs + 1_000);
