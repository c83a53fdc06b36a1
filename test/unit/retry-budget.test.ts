import { describe, expect, it } from 'vitest';
import { RetryBudget } from '../../src/runtime/retry-budget.js';

/** A clock the test moves by hand. */
function clock(start = 1_000_000): { now: () => number; advance(ms: number): void } {
  let t = start;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
  };
}

function withdrawAll(budget: RetryBudget, max = 10_000): number {
  let n = 0;
  while (n < max && budget.tryWithdraw()) n++;
  return n;
}

describe('RetryBudget', () => {
  it.each([
    // ratio, minPerSecond, requests, retries allowed = floor(ratio*requests + minPerSecond*10)
    [0.2, 10, 0, 100],
    [0.2, 1, 400, 90],
    [0.5, 0, 100, 50],
    [0, 0, 1000, 0],
    [1, 0, 7, 7],
  ])('ratio %f, minPerSecond %i, %i requests → %i retries', (ratio, minPerSecond, requests, allowed) => {
    const c = clock();
    const budget = new RetryBudget(ratio, minPerSecond, c.now);
    for (let i = 0; i < requests; i++) budget.recordRequest();
    expect(withdrawAll(budget)).toBe(allowed);
  });

  it('grows with requests recorded after it was spent', () => {
    const c = clock();
    const budget = new RetryBudget(0.5, 0, c.now);
    for (let i = 0; i < 4; i++) budget.recordRequest();
    expect(withdrawAll(budget)).toBe(2);
    budget.recordRequest();
    budget.recordRequest();
    expect(withdrawAll(budget)).toBe(1);
  });

  it('forgets requests and retries older than 10 s', () => {
    const c = clock();
    const budget = new RetryBudget(0.5, 0, c.now);
    for (let i = 0; i < 10; i++) budget.recordRequest();
    expect(withdrawAll(budget)).toBe(5);
    c.advance(5_000);
    // Still inside the window: everything counted.
    expect(budget.tryWithdraw()).toBe(false);
    c.advance(5_500);
    // The first second's requests and retries have left the window.
    expect(budget.tryWithdraw()).toBe(false);
    for (let i = 0; i < 4; i++) budget.recordRequest();
    expect(withdrawAll(budget)).toBe(2);
  });

  it('refills minPerSecond after a long idle gap', () => {
    const c = clock();
    const budget = new RetryBudget(0, 1, c.now);
    expect(withdrawAll(budget)).toBe(10);
    c.advance(60_000);
    expect(withdrawAll(budget)).toBe(10);
  });

  it('does not misbehave when the clock steps backwards', () => {
    const c = clock();
    const budget = new RetryBudget(0, 1, c.now);
    expect(withdrawAll(budget)).toBe(10);
    c.advance(-30_000);
    expect(budget.tryWithdraw()).toBe(false);
  });
});
