/**
 * Memory cgroups for the benchmark's proxies (BENCH_MEMORY_LIMIT): each Node
 * proxy process gets a group of its own with the given limit, as each sidecar
 * has its own container limit. Node sizes V8's heap from that limit at start
 * (`process.constrainedMemory()`), so the process has to be in the group
 * before Node starts: `start()` runs it through `sh -c`, which joins the group
 * and then execs the command (the pid stays the program's own).
 *
 * Needs root and a writable memory controller: cgroup v2 (a unified
 * hierarchy with `memory` in /sys/fs/cgroup/cgroup.controllers) or v1
 * (/sys/fs/cgroup/memory). Anything else is an error naming what is missing.
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';

const V2_ROOT = '/sys/fs/cgroup';
const V1_ROOT = '/sys/fs/cgroup/memory';

/** @type {string[]} */
const made = [];
let count = 0;

/** Which hierarchy can hold a memory limit here, or why none can. */
function hierarchy() {
  const controllers = path.join(V2_ROOT, 'cgroup.controllers');
  if (existsSync(controllers) && readFileSync(controllers, 'utf8').split(/\s+/).includes('memory')) return 'v2';
  if (existsSync(path.join(V1_ROOT, 'memory.limit_in_bytes'))) return 'v1';
  throw new Error(`BENCH_MEMORY_LIMIT needs a memory cgroup controller: neither ${controllers} lists "memory" nor does ${V1_ROOT} exist`);
}

/**
 * Makes a memory cgroup limited to `bytes` for one process called `name`, and
 * returns its directory (for `start()`'s `cgroup` option).
 *
 * @param {string} name
 * @param {number} bytes
 * @returns {string}
 */
export function memoryCgroup(name, bytes) {
  const kind = hierarchy();
  const dir = path.join(kind === 'v2' ? V2_ROOT : V1_ROOT, `legate-bench-${process.pid}-${++count}-${name}`);
  try {
    if (kind === 'v2') writeFileSync(path.join(V2_ROOT, 'cgroup.subtree_control'), '+memory');
    mkdirSync(dir);
    made.push(dir);
    writeFileSync(path.join(dir, kind === 'v2' ? 'memory.max' : 'memory.limit_in_bytes'), String(bytes));
  } catch (e) {
    throw new Error(`BENCH_MEMORY_LIMIT: cannot set up the memory cgroup ${dir} (${e.code ?? e.message}); it needs root and a writable cgroup filesystem`);
  }
  return dir;
}

/** Removes the groups made here; call once their processes have exited. */
export function removeCgroups() {
  for (const dir of made.splice(0)) {
    try {
      rmdirSync(dir);
    } catch {
      // Still busy (a process that outlived the harness) or gone: nothing to do.
    }
  }
}

/**
 * A size in MiB from BENCH_MEMORY_LIMIT ("128", "128Mi", "128MiB"); null when unset.
 *
 * @param {string | undefined} v
 * @returns {number | null}
 */
export function parseMemoryLimit(v) {
  if (v === undefined || v.trim() === '') return null;
  const m = /^\s*(\d+)\s*(Mi|MiB|M)?\s*$/.exec(v);
  if (m === null || Number(m[1]) < 16) throw new Error(`BENCH_MEMORY_LIMIT must be a size in MiB such as 128 or 128Mi (at least 16), not ${JSON.stringify(v)}`);
  return Number(m[1]);
}
