/**
 * Process plumbing for the benchmark: start programs pinned to a core, wait
 * for their port, read their CPU time and RSS from /proc, and make sure every
 * one of them is gone when the harness ends, however it ends.
 *
 * Every child is started by this module and remembered by pid; nothing is
 * ever killed by name.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import process from 'node:process';
import { clearTimeout, setTimeout } from 'node:timers';
import { setTimeout as sleep } from 'node:timers/promises';

/** @typedef {{ name: string, child: import('node:child_process').ChildProcess, pid: number, exited: Promise<number | null>, log: string }} Proc */

/** @type {Set<Proc>} */
const running = new Set();

/** Clock ticks per second of /proc/PID/stat's utime and stime. */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * Starts `cmd args` with stdout and stderr appended to `log`. With `cpu`, it
 * runs under `taskset -c CPU`, which execs the command: the pid we get is the
 * program's own, and every thread it makes (libuv pool, GC helpers, pino's
 * worker) inherits the affinity. With `cgroup` (a cgroup directory,
 * bench/lib/cgroup.mjs), it joins that group through `sh -c` before anything
 * else runs, and sh execs on.
 *
 * @param {string} name
 * @param {string} cmd
 * @param {string[]} args
 * @param {{ cpu?: number | undefined, log: string, env?: NodeJS.ProcessEnv, cwd?: string, cgroup?: string }} opts
 * @returns {Proc}
 */
export function start(name, cmd, args, opts) {
  const pinned = opts.cpu === undefined ? [cmd, ...args] : ['taskset', '-c', String(opts.cpu), cmd, ...args];
  const argv = opts.cgroup === undefined ? pinned : ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', opts.cgroup, ...pinned];
  const fd = openSync(opts.log, 'a');
  const child = spawn(argv[0], argv.slice(1), {
    stdio: ['ignore', fd, fd],
    env: opts.env ?? process.env,
    cwd: opts.cwd,
  });
  closeSync(fd);
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? (signal === null ? null : 128)));
    child.once('error', () => resolve(127));
  });
  /** @type {Proc} */
  const proc = { name, child, pid: child.pid ?? -1, exited, log: opts.log };
  running.add(proc);
  void exited.then(() => running.delete(proc));
  return proc;
}

/** Runs a command to completion and returns its stdout (stderr is inherited only on failure). */
export function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

/**
 * Runs `cmd args` (pinned when `cpu` is given), collecting stdout. Resolves
 * with `{ code, stdout, stderr }`. The child is tracked like `start`'s, so an
 * interrupted harness still ends it.
 */
export function capture(name, cmd, args, { cpu, timeoutMs = 600_000, env } = {}) {
  const argv = cpu === undefined ? [cmd, ...args] : ['taskset', '-c', String(cpu), cmd, ...args];
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const proc = { name, child, pid: child.pid ?? -1, exited: undefined, log: '' };
  running.add(proc);
  // A load run that hangs must not hang the harness: it is bounded like everything else.
  const timer = setTimeoutUnref(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise((resolve) => {
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(proc);
      resolve({ code: code ?? (signal === null ? null : 128), stdout, stderr });
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      running.delete(proc);
      resolve({ code: 127, stdout, stderr: stderr + String(e) });
    });
  });
  proc.exited = done.then((r) => r.code);
  return done;
}

function setTimeoutUnref(fn, ms) {
  const t = setTimeout(fn, ms);
  t.unref();
  return t;
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port; rejects after `timeoutMs` or if `proc` exits. */
export async function waitForPort(port, { timeoutMs = 10_000, proc } = {}) {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void proc?.exited.then(() => (exited = true));
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (exited) throw new Error(`${proc.name} exited before listening on ${port} (see ${proc.log})`);
    if (Date.now() > deadline) throw new Error(`nothing listened on 127.0.0.1:${port} within ${timeoutMs} ms${proc ? ` (${proc.name}, see ${proc.log})` : ''}`);
    await sleep(50);
  }
}

/** A port that was free a moment ago on 127.0.0.1 (the kernel picks it). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}

/** Parses /proc/PID/stat; the command name may hold spaces and parentheses, so split after the last ')'. */
function statFields(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return s.slice(s.lastIndexOf(')') + 2).split(' ');
}

/** Direct children of `pid` (nginx's workers), found by scanning /proc: this kernel has no task/children file. */
export function childPids(pid) {
  const out = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // Field 4 (ppid) is index 1 after the command name.
      if (Number(statFields(entry)[1]) === pid) out.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return out;
}

/** user + system CPU seconds of every pid in `pids` (threads included: /proc/PID/stat sums the thread group). */
export function cpuSeconds(pids) {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const f = statFields(pid);
      // utime and stime are fields 14 and 15; after the name, field 3 is index 0.
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      // Gone: contributes nothing.
    }
  }
  return ticks / CLK_TCK;
}

/**
 * Busy seconds of one core since boot, from /proc/stat (user, nice, system,
 * irq, softirq and steal: time the core was not available to an idle task).
 * Minus our own process's CPU time over a run, it shows how much of the
 * "proxy's own core" other work on the machine took.
 */
export function coreBusySeconds(cpu) {
  if (cpu === undefined) return 0;
  const line = readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith(`cpu${cpu} `));
  if (line === undefined) return 0;
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return (user + nice + system + irq + softirq + (steal ?? 0)) / CLK_TCK;
}

/** Resident set size in bytes, summed over `pids`. */
export function rssBytes(pids) {
  let kb = 0;
  for (const pid of pids) {
    try {
      const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) kb += Number(m[1]);
    } catch {
      // Gone.
    }
  }
  return kb * 1024;
}

/**
 * Where a process's resident memory is, by kind of mapping (bytes, from
 * /proc/PID/smaps): `binary` the node executable's own pages (code, shared
 * with every node process on the machine), `v8Heap` anonymous 256 KiB
 * mappings (V8 allocates its heap pages so), `malloc` the [heap] of the C
 * allocator's main arena, `otherAnonymous` the rest of the anonymous memory
 * (WebAssembly code and memory, V8's code and large-object spaces, other
 * allocator arenas, thread stacks), `files` other mapped files. null when
 * the process is gone.
 */
export function rssByMapping(pid) {
  let text;
  let exe;
  try {
    text = readFileSync(`/proc/${pid}/smaps`, 'utf8');
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return null;
  }
  const out = { binary: 0, v8Heap: 0, malloc: 0, otherAnonymous: 0, files: 0 };
  let kind = 'otherAnonymous';
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) {
      const name = m[3];
      const size = parseInt(m[2], 16) - parseInt(m[1], 16);
      if (name === '') kind = size === 256 * 1024 ? 'v8Heap' : 'otherAnonymous';
      else if (name === '[heap]') kind = 'malloc';
      else if (name === exe) kind = 'binary';
      else if (name.startsWith('/')) kind = 'files';
      else kind = 'otherAnonymous';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) out[kind] += Number(rss[1]) * 1024;
  }
  return out;
}

/** Sends SIGTERM, waits up to `graceMs`, then SIGKILL. `extraPids` (nginx's workers) get the same treatment. */
export async function stop(proc, { graceMs = 5_000, extraPids = [] } = {}) {
  if (proc === undefined || !running.has(proc)) return;
  proc.child.kill('SIGTERM');
  const timedOut = await Promise.race([proc.exited.then(() => false), sleep(graceMs).then(() => true)]);
  if (timedOut) proc.child.kill('SIGKILL');
  for (const pid of extraPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone, as it should be.
    }
  }
  await proc.exited;
}

/** Stops every child still running, newest first. */
export async function stopAll() {
  for (const proc of [...running].reverse()) await stop(proc, { graceMs: 3_000 });
}

/** Last resort on exit: no child outlives the harness. Synchronous, as 'exit' handlers must be. */
export function killAllNow() {
  for (const proc of running) {
    try {
      proc.child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

/** Last `n` lines of a log file, for error messages. */
export function tail(file, n = 20) {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}
