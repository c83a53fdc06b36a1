/**
 * Preloaded (`node --import ./bench/alloc-probe.mjs`) into the proxy that
 * `BENCH_PROFILE_KIND=alloc npm run bench -- --profile` measures: V8's
 * sampling heap profiler, with the objects that scavenges and mark-compacts
 * have already freed kept in the profile, so it counts what the process
 * allocates, not only what survives.
 *
 * Signals, so that the bench decides the window: the first SIGUSR2 starts
 * sampling (after the warm-up) and, once V8 is sampling, creates
 * $BENCH_ALLOC_OUT.started; the next writes the profile as JSON to
 * $BENCH_ALLOC_OUT (written to a temporary name, then renamed, so a reader
 * never sees half a file) and stops. Nothing runs until the first signal.
 */
import fs from 'node:fs';
import inspector from 'node:inspector';
import process from 'node:process';

const out = process.env.BENCH_ALLOC_OUT;
if (out === undefined || out === '') throw new Error('alloc-probe: BENCH_ALLOC_OUT is not set');

const session = new inspector.Session();
session.connect();
let sampling = false;

function fail(what, err) {
  process.stderr.write(`alloc-probe: ${what}: ${err.message ?? err}\n`);
}

process.on('SIGUSR2', () => {
  if (!sampling) {
    sampling = true;
    session.post('HeapProfiler.enable', (err) => {
      if (err) return fail('HeapProfiler.enable', err);
      // 512 bytes between samples: fine enough for a few hundred requests' worth of objects a second.
      session.post(
        'HeapProfiler.startSampling',
        { samplingInterval: 512, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true },
        (e) => {
          if (e) return fail('HeapProfiler.startSampling', e);
          fs.writeFileSync(`${out}.started`, '');
        },
      );
    });
    return;
  }
  session.post('HeapProfiler.stopSampling', (err, result) => {
    if (err) return fail('HeapProfiler.stopSampling', err);
    fs.writeFileSync(`${out}.part`, JSON.stringify(result.profile));
    fs.renameSync(`${out}.part`, out);
  });
});
