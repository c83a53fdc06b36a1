/**
 * Memory given back once legate goes idle, through the real CLI.
 *
 * On V8 13.1 and later (Node 24+) V8's memory reducer never judges a process
 * idle unless something has allocated on its C++ heap (src/runtime/memory-reducer.ts):
 * only its watchdog, 100 s after the last full collection, gives the heap back.
 * legate allocates there every 30 s so that the reducer runs as it does on
 * Node 20. Without that, this test times out on Node 24.
 */
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { needsMemoryReducerNudge } from '../../src/runtime/memory-reducer.js';
import { startCli, waitFor } from '../helpers/legate.js';
import { startUpstream } from '../helpers/upstream.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** `count` GETs, `concurrency` at a time over keep-alive connections; resolves with the statuses seen. */
async function burst(port: number, count: number, concurrency: number): Promise<Map<number, number>> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const statuses = new Map<number, number>();
  let next = 0;
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: `/items/${next}`, agent }, (res) => {
          res.resume();
          res.on('end', () => {
            statuses.set(res.statusCode ?? 0, (statuses.get(res.statusCode ?? 0) ?? 0) + 1);
            resolve();
          });
        })
        .on('error', reject);
    });
  const worker = async (): Promise<void> => {
    while (next < count) {
      next += 1;
      await one();
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    agent.destroy();
  }
  return statuses;
}

describe.skipIf(!needsMemoryReducerNudge())('memory after a burst, on V8 13.1+', () => {
  it('runs a memory-reducing mark-compact within 40 s of going idle, not at the 100 s watchdog', async () => {
    const body = 'x'.repeat(4096);
    const up = await startUpstream((_req, res) => {
      res.end(body);
    });
    cleanups.push(() => up.close());
    const p = await startCli(`listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:\n  - name: api\n    upstream: ${up.url}\n`, {
      nodeArgs: ['--trace-gc'],
      env: { LOG_LEVEL: 'info' },
    });
    cleanups.push(() => p.stop('SIGKILL'));

    const statuses = await burst(p.proxyPort, 3_000, 20);
    expect(statuses).toEqual(new Map([[200, 3_000]]));
    // Only the memory reducer (or its watchdog) starts a reducing collection in an idle process;
    // waitFor throws when the 40 s pass without one.
    await waitFor(() => (p.stdout().includes('Mark-Compact (reduce)') ? true : undefined), 'a Mark-Compact (reduce) in --trace-gc output', 40_000);
  }, 70_000);
});
