/**
 * Reads a sampling heap profile (V8's `HeapProfiler.stopSampling` result, as
 * bench/alloc-probe.mjs writes it) and prints what a request allocates: the
 * total, the functions that allocate most with their heaviest callers, and
 * the bytes grouped by where the code lives (legate's files, each npm
 * package, Node's internals). Divide by the requests served in the window
 * to get bytes per request; without a count the figures are whole bytes.
 *
 * Each node's `selfSize` is V8's estimate of all the bytes allocated at
 * that site (sampled objects scaled up by their chance of being sampled),
 * so the total agrees with `--trace-gc-nvp`'s `allocated=` summed over the
 * same window (20.6 against 21.1 KB per small request on legate's plain
 * route, docs/benchmarks.md "Allocation").
 *
 * Usage: node bench/alloc-summary.mjs PROFILE.heapprofile [--requests N] [--top 25]
 */
import { readFileSync } from 'node:fs';
import process from 'node:process';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { category, shortUrl } from './profile-summary.mjs';

function label(cf) {
  return `${cf.functionName || '(anonymous)'}${cf.url === '' ? '' : ` ${shortUrl(cf.url)}:${cf.lineNumber + 1}`}`;
}

/**
 * Bytes allocated per function (self) and per category, divided by `requests`.
 * @param {{ head: { callFrame: { functionName: string, url: string, lineNumber: number }, selfSize: number, children: unknown[] } }} profile
 */
export function summariseAlloc(profile, { requests = 1, top = 25, callerDepth = 3 } = {}) {
  const fns = new Map();
  const cats = new Map();
  let total = 0;
  const walk = (node, stack) => {
    const cf = node.callFrame;
    const name = label(cf);
    if (node.selfSize > 0) {
      total += node.selfSize;
      let f = fns.get(name);
      if (f === undefined) fns.set(name, (f = { bytes: 0, callers: new Map() }));
      f.bytes += node.selfSize;
      const chain = stack.slice(-callerDepth).reverse().join(' ← ');
      f.callers.set(chain, (f.callers.get(chain) ?? 0) + node.selfSize);
      const c = category(cf.url, cf.functionName);
      cats.set(c, (cats.get(c) ?? 0) + node.selfSize);
    }
    stack.push(name);
    for (const child of node.children) walk(child, stack);
    stack.pop();
  };
  walk(profile.head, []);
  const per = (b) => b / requests;
  return {
    requests,
    bytes: per(total),
    functions: [...fns]
      .sort((a, b) => b[1].bytes - a[1].bytes)
      .slice(0, top)
      .map(([fn, f]) => ({
        function: fn,
        bytes: per(f.bytes),
        callers: [...f.callers].sort((a, b) => b[1] - a[1]).slice(0, 2).map(([chain, b]) => ({ chain, share: Math.round((100 * b) / f.bytes) })),
      })),
    categories: [...cats].sort((a, b) => b[1] - a[1]).map(([c, b]) => ({ category: c, bytes: per(b) })),
  };
}

export function formatAllocSummary(s, title = 'allocations') {
  const unit = s.requests === 1 ? 'bytes' : 'bytes per request';
  const n = (b) => String(Math.round(b)).padStart(7);
  const lines = [`${title}: ${Math.round(s.bytes)} ${unit} allocated`, '', `Top ${s.functions.length} allocating functions (${unit}):`];
  for (const f of s.functions) {
    lines.push(`  ${n(f.bytes)}  ${f.function}`);
    for (const c of f.callers) if (c.chain !== '') lines.push(`           ${String(c.share).padStart(3)}% ← ${c.chain}`);
  }
  lines.push('', `By where the code lives (${unit}):`);
  for (const c of s.categories.slice(0, 20)) lines.push(`  ${n(c.bytes)}  ${c.category}`);
  return lines.join('\n');
}

// CLI use: `node bench/alloc-summary.mjs FILE --requests N`.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { requests: { type: 'string', default: '1' }, top: { type: 'string', default: '25' } },
  });
  const file = positionals[0];
  if (file === undefined) {
    process.stderr.write('usage: node bench/alloc-summary.mjs PROFILE.heapprofile [--requests N] [--top 25]\n');
    process.exit(2);
  }
  const s = summariseAlloc(JSON.parse(readFileSync(file, 'utf8')), { requests: Number(values.requests), top: Number(values.top) });
  process.stdout.write(formatAllocSummary(s, file) + '\n');
}
