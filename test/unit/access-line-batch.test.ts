/**
 * Access lines to a file are gathered into writes of ~8 KiB: one write per
 * batch, lines in order, a quiet period flushed by the timer, the rest by close.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { createAccessLog, LineBatch, type AccessLine } from '../../src/observability/access-log.js';
import { tempDir, waitFor } from '../helpers/legate.js';

function line(requestId: string, tries: AccessLine['tries'] = []): AccessLine {
  return {
    requestId,
    method: 'GET',
    path: '/x',
    route: 'r',
    upstream: '127.0.0.1:1',
    status: 200,
    attempts: tries.length,
    durationMs: 1,
    upstreamMs: null,
    bytesIn: 0,
    bytesOut: 0,
    error: null,
    optOut: [],
    optOutDenied: [],
    tries,
  };
}

function ids(file: string): string[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => (JSON.parse(l) as { requestId: string }).requestId);
}

describe('LineBatch', () => {
  it('hands out one write once the size is reached, lines in order; flush() writes the rest', () => {
    const writes: string[] = [];
    const batch = new LineBatch((t) => writes.push(t), 10);
    batch.write('abcd\n');
    expect(writes).toEqual([]);
    batch.write('efgh\n');
    expect(writes).toEqual(['abcd\nefgh\n']);
    batch.write('ij\n');
    batch.flush();
    batch.flush();
    expect(writes).toEqual(['abcd\nefgh\n', 'ij\n']);
  });
});

describe('the file access log', () => {
  it('a lone line reaches the file without close (the flush timer), and close writes what is left', async () => {
    const file = path.join(tempDir(), 'access.log');
    const log = createAccessLog(pino({ level: 'info' }), file);
    log.write(line('first'));
    await waitFor(() => (ids(file).length === 1 ? true : undefined), 'the line flushed by the timer', 3_000);
    for (let i = 0; i < 5; i++) log.write(line(`n${i}`));
    await log.close();
    expect(ids(file)).toEqual(['first', 'n0', 'n1', 'n2', 'n3', 'n4']);
  });

  it('a line only pino can write (a BigInt) comes after the lines gathered before it', async () => {
    const file = path.join(tempDir(), 'access.log');
    const log = createAccessLog(pino({ level: 'info' }), file);
    log.write(line('a'));
    log.write(line('b'));
    log.write(line('odd', [{ endpoint: 'e', ms: 10n as unknown as number }]));
    log.write(line('c'));
    await log.close();
    expect(ids(file)).toEqual(['a', 'b', 'odd', 'c']);
  });
});
