import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FolderWatcher } from '../../src/tls/file-watcher.js';
import { createTestPki, installPair, type RotationMode, type TestPki } from '../helpers/certs.js';
import { tempDir, waitFor } from '../helpers/legate.js';

let pki: TestPki;
const open: FolderWatcher[] = [];
beforeAll(() => {
  pki = createTestPki();
});
afterEach(() => {
  for (const w of open.splice(0)) w.close();
});

function watcher(opts: { pollMs?: number; debounceMs?: number } = {}): { w: FolderWatcher; calls: () => number } {
  let n = 0;
  const w = new FolderWatcher(() => n++, { debounceMs: opts.debounceMs ?? 30, maxWaitMs: 1_000, pollMs: opts.pollMs ?? 0 });
  open.push(w);
  return { w, calls: () => n };
}

describe('FolderWatcher (fs.watch only, no poll)', () => {
  it.each<RotationMode>(['rename', 'in-place', 'kubernetes'])('sees a %s rotation of the pair', async (mode) => {
    const dir = tempDir();
    const pair = installPair(dir, pki.clientA, mode);
    const { w, calls } = watcher();
    w.setFolders([path.dirname(pair.cert)]);
    expect(w.watching).toEqual([dir]);
    pair.rotate(pki.clientB);
    await waitFor(() => (calls() > 0 ? true : undefined), `a change event after a ${mode} rotation`, 5_000);
  });

  it('coalesces a burst of writes into one run', async () => {
    const dir = tempDir();
    const { w, calls } = watcher({ debounceMs: 200 });
    w.setFolders([dir]);
    for (let i = 0; i < 20; i++) writeFileSync(path.join(dir, 'tls.crt'), `v${i}`);
    await waitFor(() => (calls() > 0 ? true : undefined), 'the debounced run');
    // The burst took far less than the debounce, so exactly one run came out of it.
    expect(calls()).toBe(1);
  });

  it('stops watching folders that are no longer wanted, and everything on close', async () => {
    const a = tempDir();
    const b = tempDir();
    const { w } = watcher({ pollMs: 60_000 });
    w.setFolders([a, b]);
    expect(w.watching.sort()).toEqual([a, b].sort());
    w.setFolders([b]);
    expect(w.watching).toEqual([b]);
    expect(w.active).toBe(true);
    w.close();
    expect(w.watching).toEqual([]);
    expect(w.active).toBe(false);
  });

  it('runs nothing after close, even for an event already on its way', async () => {
    const dir = tempDir();
    const closed = watcher({ debounceMs: 10 });
    closed.w.setFolders([dir]);
    // A second watcher on the same folder with a longer debounce: when it has run, the first would have too.
    const witness = watcher({ debounceMs: 300 });
    witness.w.setFolders([dir]);
    writeFileSync(path.join(dir, 'tls.crt'), 'x');
    closed.w.close();
    await waitFor(() => (witness.calls() > 0 ? true : undefined), 'the witness watcher');
    expect(closed.calls()).toBe(0);
  });
});

describe('FolderWatcher backup poll', () => {
  it('polls a folder it cannot watch and starts watching it once it exists', async () => {
    const parent = tempDir();
    const dir = path.join(parent, 'not-yet');
    const { w, calls } = watcher({ pollMs: 50 });
    w.setFolders([dir]);
    expect(w.watching).toEqual([]);
    await waitFor(() => (calls() > 0 ? true : undefined), 'a poll run');
    mkdirSync(dir);
    await waitFor(() => (w.watching.includes(dir) ? true : undefined), 'the folder to be watched');
  });
});
