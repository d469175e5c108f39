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
    pool: 'forks',
  },
});
