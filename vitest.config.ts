import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Removes the test file's temporary directories when it ends.
    setupFiles: ['test/setup.ts'],
    // e2e tests start the real CLI and real upstreams; give slow CI machines room.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
  },
});
