/**
 * BENCH_STALLS=1: what held up the slow requests of the latency runs.
 *
 * The load generator lists each request slower than SLOW_MS (openloop.mjs
 * --slow); bench/stall-probe.mjs, preloaded into every legate process, logs
 * that process's event-loop gaps, GC pauses and slow log writes with the same
 * wall clock. A stall shows as a burst of slow requests scheduled one after
 * another; this groups them and puts beside each burst what the proxy's
 * probe saw from just before it to its end. A burst with nothing beside it,
 * or with the generator itself late, was not the proxy's doing.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** Requests slower than this are listed by the generator. */
export const SLOW_MS = 8;
/** A burst is reported when one of its requests took at least this long. */
const REPORT_MS = 12;
/** Slow requests scheduled less than this apart belong to one burst. */
const JOIN_MS = 6;
/** Probe events this long before a burst's first request still count for it (a stall delays what was already waiting). */
const LOOKBACK_MS = 80;
const GC_KIND = { 1: 'scavenge', 2: 'minor-mc', 4: 'mark-compact', 8: 'incremental', 16: 'weak-callbacks' };

/** Every probe file in `dir`, by pid: [{ kind, at, ms, detail }]. */
export function readProbeLogs(dir) {
  const byPid = new Map();
  if (!existsSync(dir)) return byPid;
  for (const name of readdirSync(dir)) {
    const m = /^(\d+)\.log$/.exec(name);
    if (m === null) continue;
    const events = [];
    for (const line of readFileSync(path.join(dir, name), 'utf8').split('\n')) {
      const [kind, at, ms, detail] = line.split(' ');
      if (kind === 'gap' || kind === 'gc' || kind === 'write') {
        events.push({ kind: kind === 'gc' ? (GC_KIND[detail] ?? 'gc') : kind, at: Number(at), ms: Number(ms) });
      }
    }
    byPid.set(Number(m[1]), events);
  }
  return byPid;
}

/** Slow requests ([scheduled, latency, late]) grouped into bursts that reached REPORT_MS. */
export function bursts(slow) {
  const groups = [];
  for (const r of slow) {
    const last = groups.at(-1);
    if (last !== undefined && r[0] - last.at(-1)[0] < JOIN_MS) last.push(r);
    else groups.push([r]);
  }
  return groups
    .filter((g) => g.some((r) => r[1] >= REPORT_MS))
    .map((g) => ({
      at: g[0][0],
      requests: g.length,
      spanMs: Math.round(g.at(-1)[0] - g[0][0]),
      maxMs: Math.max(...g.map((r) => r[1])),
      generatorLateMs: Math.max(...g.map((r) => r[2])),
    }));
}

/** The probe's events from LOOKBACK_MS before the burst to its end, as "kind ms @offset". */
function beside(burst, events) {
  const from = burst.at - LOOKBACK_MS;
  const to = burst.at + burst.spanMs + 5;
  return events
    .filter((e) => e.at + e.ms >= from && e.at <= to)
    .map((e) => `${e.kind} ${e.ms} ms @${Math.round(e.at - burst.at) >= 0 ? '+' : ''}${Math.round(e.at - burst.at)}`);
}

/**
 * One entry per latency run that had a burst: { body, target, repeat, bursts: [{ …, atS, probe }] }.
 * `runs` is [{ body, target, repeat, pids, result }] where result is openloop's JSON.
 */
export function stallReport(runs, probeDir) {
  const logs = readProbeLogs(probeDir);
  const report = [];
  for (const run of runs) {
    const found = bursts(run.result.slow ?? []);
    if (found.length === 0) continue;
    const events = run.pids.flatMap((pid) => logs.get(pid) ?? []);
    const probed = run.pids.some((pid) => logs.has(pid));
    report.push({
      body: run.body,
      target: run.target,
      repeat: run.repeat,
      bursts: found.map((b) => ({
        ...b,
        atS: Math.round((b.at - run.result.startedAt) / 100) / 10,
        probe: probed ? beside(b, events) : null,
      })),
    });
  }
  return report;
}

/** The report as text, one line per burst. */
export function renderStalls(report) {
  if (report.length === 0) return `No latency run had a burst of requests slower than ${REPORT_MS} ms.`;
  const lines = [`Bursts of slow requests (one reaching ${REPORT_MS} ms or more) and what each proxy's probe saw from ${LOOKBACK_MS} ms before to the end:`];
  for (const r of report) {
    for (const b of r.bursts) {
      const probe = b.probe === null ? '(no probe in this process)' : b.probe.length === 0 ? 'probe: nothing' : `probe: ${b.probe.join('; ')}`;
      lines.push(
        `  ${r.body.padEnd(5)} ${r.target.padEnd(16)} repeat ${r.repeat} at ${b.atS} s: ${b.requests} requests over ${b.spanMs} ms, ` +
          `worst ${b.maxMs} ms, generator late up to ${b.generatorLateMs} ms | ${probe}`,
      );
    }
  }
  return lines.join('\n');
}
