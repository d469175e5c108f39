import { defineConfig } from 'vitest/config';

// Tests run against the packages' TypeScript source through the `tollgate-source` export
// condition, so no build step comes before them.
export default defineConfig({
  resolve: { conditions: ['tollgate-source', 'module', 'node', 'import', 'default'] },
  ssr: { resolve: { conditions: ['tollgate-source', 'module', 'node', 'import', 'default'] } },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    setupFiles: ['test/support/quiet-warnings.ts'],
    pool: 'forks',
    // The machines have 2 cores, and the integration tests start redis-servers, clusters and child
    // processes of their own: two test files at a time keeps timing assertions honest.
    maxWorkers: 2,
  },
});
