import { setTimeout as sleep } from 'node:timers/promises';
import pRetry from 'p-retry';
import { describe, expect, it } from 'vitest';
import { asAbortSignal, RequestAbort } from '../../src/proxy/abort.js';

describe('RequestAbort', () => {
  it('runs each listener once, in order, not after removal, and keeps the first reason', () => {
    const a = new RequestAbort();
    const calls: string[] = [];
    const removed = (): void => {
      calls.push('removed');
    };
    a.addEventListener('abort', () => calls.push('first'));
    a.addEventListener('abort', removed);
    a.addEventListener('abort', () => calls.push('last'));
    a.removeEventListener('abort', removed);
    a.abort(new Error('one'));
    a.abort(new Error('two'));
    expect(calls).toEqual(['first', 'last']);
    expect(a.aborted).toBe(true);
    expect((a.reason as Error).message).toBe('one');
    expect(() => a.throwIfAborted()).toThrow('one');
  });

  it('is taken as an AbortSignal by timers/promises: a wait is cut with the reason as cause', async () => {
    const a = new RequestAbort();
    const waiting = sleep(60_000, undefined, { signal: asAbortSignal(a) });
    a.abort(new Error('deadline'));
    await expect(waiting).rejects.toMatchObject({ name: 'AbortError', cause: a.reason });
  });

  it('is taken as an AbortSignal by p-retry: an abort ends retrying with the reason', async () => {
    const a = new RequestAbort();
    let tries = 0;
    const run = pRetry(
      () => {
        tries++;
        if (tries === 2) a.abort(new Error('app gone'));
        return Promise.reject(new Error('upstream failed'));
      },
      { retries: 10, minTimeout: 0, signal: asAbortSignal(a) },
    );
    await expect(run).rejects.toThrow(/app gone|upstream failed/);
    expect(tries).toBe(2);
  });
});
