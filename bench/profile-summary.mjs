/**
 * Reads a V8 .cpuprofile (from `node --cpu-prof`) and prints where the CPU
 * went: the top functions by self time, and self time grouped by where the
 * code lives (legate's own files, each npm package, Node's internals, GC).
 * With --folded FILE it also writes folded stacks ("a;b;c 123" per line, µs)
 * that flamegraph.pl, speedscope or inferno turn into a flame graph.
 *
 * With --callers, each top function is followed by its heaviest caller
 * chains (4 frames up), which is what tells a fix where to look.
 *
 * Usage: node bench/profile-summary.mjs PROFILE.cpuprofile [--top 25] [--callers] [--folded OUT]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import process from 'node:process';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

/** Where a frame's code lives, for the grouped view. */
export function category(url, functionName) {
  if (url === '') {
    // V8's synthetic nodes: (program) is native code outside JS, (idle) the loop waiting.
    if (functionName.startsWith('(')) return functionName;
    return '(native)';
  }
  const nm = url.lastIndexOf('node_modules/');
  if (nm !== -1) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    return rest[0].startsWith('@') ? `npm:${rest[0]}/${rest[1]}` : `npm:${rest[0]}`;
  }
  if (url.startsWith('node:')) return url;
  const dist = url.indexOf('/dist/');
  if (dist !== -1) return `legate:${url.slice(dist + '/dist/'.length)}`;
  return url.replace(/^file:\/\//, '');
}

/** A frame's file as the summaries print it: package-relative, dist-relative, or the path. */
export function shortUrl(url) {
  const nm = url.lastIndexOf('node_modules/');
  if (nm !== -1) return url.slice(nm + 'node_modules/'.length);
  const dist = url.indexOf('/dist/');
  if (dist !== -1) return url.slice(dist + 1);
  return url.replace(/^file:\/\//, '');
}

/**
 * Self time per function and per category. Each sample is charged the time
 * until the next sample (V8 records `timeDeltas[i]` as the gap before sample i).
 */
export function summarise(profile, { top = 25, fromUs = -Infinity, toUs = Infinity, callerDepth = 4 } = {}) {
  const nodes = new Map();
  for (const n of profile.nodes) nodes.set(n.id, n);
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  // Sample timestamps are V8's monotonic clock in µs, the same clock as
  // process.hrtime(): a caller can keep only the window it loaded (no startup).
  const selfUs = new Map();
  const { samples, timeDeltas } = profile;
  let t = profile.startTime;
  for (let i = 0; i < samples.length; i++) {
    t += timeDeltas[i];
    if (t < fromUs || t > toUs) continue;
    const dt = timeDeltas[i + 1] ?? 0;
    selfUs.set(samples[i], (selfUs.get(samples[i]) ?? 0) + dt);
  }
  // Inclusive time of legate's own functions (dist/): what each layer costs with everything it calls.
  const inclusiveUs = new Map();
  const isLegate = (id) => nodes.get(id).callFrame.url.includes('/dist/');
  const frameName = (id) => {
    const cf = nodes.get(id).callFrame;
    const where = cf.url === '' ? '' : ` ${shortUrl(cf.url)}:${cf.lineNumber + 1}`;
    return `${cf.functionName || '(anonymous)'}${where}`;
  };

  let total = 0;
  let idle = 0;
  const byFunction = new Map();
  const byCategory = new Map();
  /** function key → (caller chain → µs): who calls each function, to tell *why* it runs. */
  const callersOf = new Map();
  for (const [id, us] of selfUs) {
    const { callFrame } = nodes.get(id);
    total += us;
    if (callFrame.functionName === '(idle)') {
      idle += us;
      continue;
    }
    const name = callFrame.functionName || '(anonymous)';
    const where = callFrame.url === '' ? '' : `${shortUrl(callFrame.url)}:${callFrame.lineNumber + 1}`;
    const key = `${name}\t${where}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
    const chain = [];
    for (let cur = parent.get(id); cur !== undefined && chain.length < callerDepth; cur = parent.get(cur)) {
      if (nodes.get(cur).callFrame.functionName === '(root)') break;
      chain.push(frameName(cur));
    }
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      if (!isLegate(cur)) continue;
      const k = frameName(cur);
      // A frame twice on one stack (recursion) is counted once.
      if (seen.has(k)) continue;
      seen.add(k);
      inclusiveUs.set(k, (inclusiveUs.get(k) ?? 0) + us);
    }
    const byChain = callersOf.get(key) ?? new Map();
    const chainKey = chain.join(' ← ');
    byChain.set(chainKey, (byChain.get(chainKey) ?? 0) + us);
    callersOf.set(key, byChain);
    const cat = category(callFrame.url, callFrame.functionName);
    byCategory.set(cat, (byCategory.get(cat) ?? 0) + us);
  }
  const busy = total - idle;
  const pct = (us) => Math.round((us / busy) * 1000) / 10;
  const functions = [...byFunction]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([key, us]) => {
      const [name, where] = key.split('\t');
      const callers = [...(callersOf.get(key) ?? new Map())]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 2)
        .map(([chain, cus]) => ({ chain, share: Math.round((cus / us) * 100) }));
      return { function: name, where, selfMs: Math.round(us / 100) / 10, pct: pct(us), callers };
    });
  const categories = [...byCategory]
    .sort((a, b) => b[1] - a[1])
    .map(([cat, us]) => ({ category: cat, selfMs: Math.round(us / 100) / 10, pct: pct(us) }));

  const legateInclusive = [...inclusiveUs]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 20)
    .map(([frame, us]) => ({ frame, totalMs: Math.round(us / 100) / 10, pct: pct(us) }));

  /** Folded stacks for a flame graph: root-first frame names joined by ';', self µs. */
  const folded = () => {
    const lines = [];
    for (const [id, us] of selfUs) {
      if (us <= 0) continue;
      const stack = [];
      for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
        if (nodes.get(cur).callFrame.functionName === '(root)') break;
        stack.push(frameName(cur).replaceAll(';', ','));
      }
      lines.push(`${stack.reverse().join(';')} ${Math.round(us)}`);
    }
    return lines.join('\n') + '\n';
  };

  return {
    totalMs: Math.round(total / 1000),
    busyMs: Math.round(busy / 1000),
    idleMs: Math.round(idle / 1000),
    functions,
    categories,
    legateInclusive,
    folded,
  };
}

/** The summary as text tables. */
export function formatSummary(s, title = 'profile', { callers = false } = {}) {
  const lines = [];
  lines.push(`${title}: ${s.busyMs} ms on CPU, ${s.idleMs} ms idle (${s.totalMs} ms sampled)`);
  lines.push('');
  lines.push(`Top ${s.functions.length} functions by self time (% of CPU time, idle excluded):`);
  lines.push('  self%   self ms  function  (where)');
  for (const f of s.functions) {
    lines.push(`  ${String(f.pct.toFixed(1)).padStart(5)}  ${String(f.selfMs.toFixed(1)).padStart(8)}  ${f.function}${f.where ? `  (${f.where})` : ''}`);
    if (callers) for (const c of f.callers) lines.push(`                   ${String(c.share).padStart(3)}% ← ${c.chain}`);
  }
  lines.push('');
  lines.push('Self time by where the code lives:');
  for (const c of s.categories.slice(0, 20)) {
    lines.push(`  ${String(c.pct.toFixed(1)).padStart(5)}  ${String(c.selfMs.toFixed(1)).padStart(8)}  ${c.category}`);
  }
  lines.push('');
  lines.push("legate's own functions by inclusive time (self + everything they call):");
  for (const f of s.legateInclusive) {
    lines.push(`  ${String(f.pct.toFixed(1)).padStart(5)}  ${String(f.totalMs.toFixed(1)).padStart(8)}  ${f.frame}`);
  }
  return lines.join('\n');
}

// CLI use: `node bench/profile-summary.mjs FILE`.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: 'string', default: '25' }, folded: { type: 'string' }, callers: { type: 'boolean', default: false } },
  });
  const file = positionals[0];
  if (file === undefined) {
    process.stderr.write('usage: node bench/profile-summary.mjs PROFILE.cpuprofile [--top 25] [--callers] [--folded OUT]\n');
    process.exit(2);
  }
  const s = summarise(JSON.parse(readFileSync(file, 'utf8')), { top: Number(values.top) });
  process.stdout.write(formatSummary(s, file, { callers: values.callers }) + '\n');
  if (values.folded !== undefined) {
    writeFileSync(values.folded, s.folded());
    process.stdout.write(`\nfolded stacks: ${values.folded}\n`);
  }
}
