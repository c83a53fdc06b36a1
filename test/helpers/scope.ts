/**
 * What a test file starts — upstreams, CLI processes, in-process apps — closed
 * after each test, newest first, so every test leaves the machine as it found it.
 */
import { afterEach } from 'vitest';
import { startApp, startCli, type CliProcess, type InProcess } from './legate.js';
import { startUpstream, type Upstream } from './upstream.js';

export interface TestScope {
  /** Runs `close` after the current test. */
  defer(close: () => Promise<unknown>): void;
  upstream(...args: Parameters<typeof startUpstream>): Promise<Upstream>;
  /** The real CLI as a subprocess (killed after the test). */
  cli(...args: Parameters<typeof startCli>): Promise<CliProcess>;
  /** legate in-process, from YAML as given. */
  app(yaml: string): Promise<InProcess>;
}

/** Call once at the top of a test file: it registers the afterEach that closes everything. */
export function testScope(): TestScope {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()?.();
  });
  const defer = (close: () => Promise<unknown>): void => {
    cleanups.push(close);
  };
  return {
    defer,
    async upstream(...args) {
      const u = await startUpstream(...args);
      defer(() => u.close());
      return u;
    },
    async cli(...args) {
      const p = await startCli(...args);
      defer(() => p.stop('SIGKILL'));
      return p;
    },
    async app(yaml) {
      const a = await startApp(yaml);
      defer(() => a.stop());
      return a;
    },
  };
}
