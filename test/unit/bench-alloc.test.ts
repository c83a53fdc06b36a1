/**
 * The allocation profile behind `BENCH_PROFILE_KIND=alloc npm run bench --
 * --profile`, on the Node running the tests: bench/alloc-probe.mjs preloaded
 * into a real process samples between two SIGUSR2s and counts objects that
 * were freed before the profile was taken (what a proxy's per-request
 * garbage is), and bench/alloc-summary.mjs reads the profile back per
 * request. A Node whose inspector dropped the options that keep freed
 * objects would leave only the live ones, and this fails.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, tempDir, waitFor } from '../helpers/legate.js';

const PROBE = path.join(ROOT, 'bench/alloc-probe.mjs');
const SUMMARY = path.join(ROOT, 'bench/alloc-summary.mjs');
const MiB = 1024 * 1024;

// Once sampling has started, allocates 64 MiB in 64 KiB arrays, none kept, and says so.
const WORKLOAD = `
const fs = require('node:fs');
const marker = process.env.BENCH_ALLOC_OUT + '.started';
let sink = 0;
function allocateChunk() {
  const a = new Array(8192);
  for (let i = 0; i < a.length; i++) a[i] = i;
  sink += a.length;
}
function waitForSampler() {
  if (!fs.existsSync(marker)) return setTimeout(waitForSampler, 5);
  for (let i = 0; i < 1024; i++) allocateChunk();
  process.stdout.write('allocated ' + sink + '\\n');
}
process.stdout.write('ready\\n');
waitForSampler();
setInterval(() => {}, 1000);
`;

interface HeapNode {
  callFrame: { functionName: string };
  selfSize: number;
  children: HeapNode[];
}

function bytesIn(node: HeapNode, fn?: string): number {
  const own = fn === undefined || node.callFrame.functionName === fn ? node.selfSize : 0;
  return node.children.reduce((sum, c) => sum + bytesIn(c, fn), own);
}

describe('bench allocation profile', () => {
  it('counts what a process allocated and freed between two SIGUSR2s, and reads it back per request', async () => {
    const dir = tempDir();
    const out = path.join(dir, 'run.heapprofile');
    const child = spawn(process.execPath, ['--import', PROBE, '-e', WORKLOAD], {
      env: { ...process.env, BENCH_ALLOC_OUT: out },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await waitFor(() => (stdout.includes('ready') ? true : undefined), 'the workload to start');
      // Nothing is sampled, and nothing written, before the first signal.
      expect(existsSync(`${out}.started`)).toBe(false);
      child.kill('SIGUSR2');
      await waitFor(() => (stdout.includes('allocated') ? true : undefined), `the workload to allocate (stderr: ${stderr})`);
      child.kill('SIGUSR2');
      await waitFor(() => (existsSync(out) ? true : undefined), `the profile at ${out} (stderr: ${stderr})`);
    } finally {
      child.kill('SIGKILL');
    }
    expect(stderr).toBe('');

    const profile = JSON.parse(readFileSync(out, 'utf8')) as { head: HeapNode };
    // 1,024 arrays of 8,192 small integers: 64 MiB of elements, never more than one array alive.
    const chunkBytes = bytesIn(profile.head, 'allocateChunk');
    expect(chunkBytes).toBeGreaterThan(32 * MiB);
    expect(chunkBytes).toBeLessThan(256 * MiB);

    const r = spawnSync(process.execPath, [SUMMARY, out, '--requests', '1024', '--top', '5'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const total = /: (\d+) bytes per request allocated/.exec(r.stdout);
    expect(total, r.stdout).not.toBeNull();
    expect(Number(total?.[1])).toBeGreaterThanOrEqual(Math.floor(chunkBytes / 1024));
    expect(r.stdout).toMatch(/^\s+\d+\s+allocateChunk /m);
  });

  it('says how to use the summary when no profile is named', () => {
    const r = spawnSync(process.execPath, [SUMMARY], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('usage: node bench/alloc-summary.mjs');
  });
});
