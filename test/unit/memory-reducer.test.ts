/**
 * Which V8 versions get the memory-reducer allocation, and that its timer
 * never holds a process open. That it makes the reducer act is
 * test/e2e/memory.test.ts.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { needsMemoryReducerNudge } from '../../src/runtime/memory-reducer.js';
import { ROOT } from '../helpers/legate.js';

describe('needsMemoryReducerNudge', () => {
  it.each([
    ['11.3.244.8-node.33', false], // Node 20
    ['12.4.254.21-node.33', false], // Node 22
    ['13.0.245.25', false],
    ['13.1.201.8', true], // the first V8 with the decaying estimate
    ['13.6.233.17-node.37', true], // Node 24
    ['14.6.202.9', true], // Node 26
  ])('V8 %s: %s', (version, expected) => {
    expect(needsMemoryReducerNudge(version)).toBe(expected);
  });
});

describe('startMemoryReducerNudge', () => {
  it('leaves nothing that keeps the process alive', async () => {
    const module = pathToFileURL(path.join(ROOT, 'dist/runtime/memory-reducer.js')).href;
    const script = `import(${JSON.stringify(module)}).then((m) => { m.startMemoryReducerNudge(10); setTimeout(() => console.log('ticked'), 50); })`;
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['-e', script], { timeout: 10_000 }, (err, stdout) => (err === null ? resolve(stdout) : reject(err)));
    });
    // Printed after several ticks of a 10 ms interval, then exited by itself: had the timer held it,
    // execFile's timeout would have killed it and rejected.
    expect(out.trim()).toBe('ticked');
  });
});
