/**
 * Worker thread of the open-loop load generator: posts tick `i` at
 * `startAbs + i * intervalMs` (absolute ms since the epoch, as
 * `performance.timeOrigin + performance.now()`).
 *
 * Why a worker: Node's timers have millisecond granularity, so a
 * `setTimeout` loop sends each request 0–1 ms late (p50 ≈ 0.5 ms, measured
 * here), which is more than a proxy adds. `Atomics.wait` sleeps with
 * sub-millisecond precision, and it may block this thread freely because the
 * main thread keeps its own event loop for the sockets.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';

const { startAbs, intervalMs, count } = workerData;
const cell = new Int32Array(new SharedArrayBuffer(4));
const origin = performance.timeOrigin;

for (let i = 0; i < count; i++) {
  const wait = startAbs + i * intervalMs - origin - performance.now();
  // Nobody ever notifies `cell`: this is a precise sleep, not a lock.
  if (wait > 0) Atomics.wait(cell, 0, 0, wait);
  parentPort.postMessage(i);
}
