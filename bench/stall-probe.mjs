/**
 * Preloaded into each legate process by `BENCH_STALLS=1 npm run bench`
 * (`node --import bench/stall-probe.mjs`): writes what could hold a request
 * up, with wall-clock times, so the bench can line it up with the slow
 * requests the load generator saw.
 *
 *   gap   TIME MS   the event loop ran no timer for MS (> 8 ms): it was busy or stopped
 *   gc    TIME MS   a garbage collection pause longer than 1 ms, with V8's kind
 *                   (1 scavenge, 4 mark-compact, 8 incremental marking step, 16 weak callbacks)
 *   write TIME MS   an fs.writeSync (the access log's) that took longer than 1 ms
 *
 * One file per process: $BENCH_STALL_DIR/<pid>.log. The probe itself costs a
 * timer every 2 ms, so a run with it is a diagnosis, not a measurement.
 */
import fs from 'node:fs';
import path from 'node:path';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import process from 'node:process';
import { setInterval } from 'node:timers';

const dir = process.env.BENCH_STALL_DIR;
if (dir !== undefined && dir !== '') {
  const file = path.join(dir, `${process.pid}.log`);
  const origin = performance.timeOrigin;
  const at = (t) => (origin + t).toFixed(1);
  // appendFileSync goes through fs.writeSync, timed below: `writing` keeps the probe from timing itself.
  let writing = false;
  const out = (line) => {
    writing = true;
    try {
      fs.appendFileSync(file, line + '\n');
    } finally {
      writing = false;
    }
  };
  out(`start ${at(0)} ${process.argv.slice(2).join(' ')}`);

  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    if (now - last > 8) out(`gap ${at(last)} ${(now - last).toFixed(1)}`);
    last = now;
  }, 2).unref();

  const writeSync = fs.writeSync;
  fs.writeSync = function timedWriteSync(...args) {
    if (writing) return writeSync.apply(this, args);
    const t = performance.now();
    try {
      return writeSync.apply(this, args);
    } finally {
      const took = performance.now() - t;
      if (took > 1) out(`write ${at(t)} ${took.toFixed(1)}`);
    }
  };

  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (e.duration > 1) out(`gc ${at(e.startTime)} ${e.duration.toFixed(1)} ${e.detail?.kind ?? ''}`);
  }).observe({ entryTypes: ['gc'] });
}
