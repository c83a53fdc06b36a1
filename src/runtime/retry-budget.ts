/**
 * A per-route retry budget (as Linkerd's): over the last 10 s, retries may
 * reach `ratio` of requests plus `minPerSecond` per second. It keeps retries
 * from multiplying load on an upstream that is already failing.
 */
import { performance } from 'node:perf_hooks';

const WINDOW_SECONDS = 10;

export class RetryBudget {
  readonly #ratio: number;
  readonly #minPerSecond: number;
  readonly #requests = new Array<number>(WINDOW_SECONDS).fill(0);
  readonly #retries = new Array<number>(WINDOW_SECONDS).fill(0);
  #second = 0;
  readonly #now: () => number;

  /** `now` in ms; monotonic by default, so a wall-clock step cannot freeze or flush the window. */
  constructor(ratio: number, minPerSecond: number, now: () => number = () => performance.now()) {
    this.#ratio = ratio;
    this.#minPerSecond = minPerSecond;
    this.#now = now;
    this.#second = Math.floor(now() / 1000);
  }

  /** Drops buckets older than the window (no timer needed: done lazily). */
  #advance(): number {
    const second = Math.floor(this.#now() / 1000);
    const gap = Math.min(second - this.#second, WINDOW_SECONDS);
    for (let i = 1; i <= gap; i++) {
      const slot = (this.#second + i) % WINDOW_SECONDS;
      this.#requests[slot] = 0;
      this.#retries[slot] = 0;
    }
    if (gap > 0) this.#second = second;
    return this.#second % WINDOW_SECONDS;
  }

  /** Counts one request (its first try). */
  recordRequest(): void {
    const slot = this.#advance();
    this.#requests[slot] = (this.#requests[slot] as number) + 1;
  }

  /** Takes one retry from the budget; false (and nothing taken) when it is spent. */
  tryWithdraw(): boolean {
    const slot = this.#advance();
    let requests = 0;
    let retries = 0;
    for (let i = 0; i < WINDOW_SECONDS; i++) {
      requests += this.#requests[i] as number;
      retries += this.#retries[i] as number;
    }
    if (retries + 1 > this.#ratio * requests + this.#minPerSecond * WINDOW_SECONDS) return false;
    this.#retries[slot] = (this.#retries[slot] as number) + 1;
    return true;
  }
}
