// One project per test tier: test/unit, test/workflows, test/replay, test/integration, test/e2e.
// scripts/test.sh runs them with --runInBand: the server-backed tiers share one Postgres and one Temporal
// dev server, and parallel workers would starve them on a 2-core machine.

/** @type {import('@swc/core').Options} */
const swc = {
  jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
  module: { type: 'commonjs' },
  sourceMaps: 'inline',
};

/** Shared by every tier. */
const base = {
  rootDir: __dirname,
  testEnvironment: 'node',
  transform: { '^.+\\.(t|j)sx?$': ['@swc/jest', swc] },
  testPathIgnorePatterns: ['/node_modules/', '/dist/'],
};

/**
 * Starts Postgres + the Temporal dev server once per run and publishes TEST_* variables (test/support/env.ts).
 * Jest runs a globalSetup module once per distinct path, however many projects list it.
 */
const serverHooks = {
  globalSetup: '<rootDir>/test/support/global-setup.ts',
  globalTeardown: '<rootDir>/test/support/global-teardown.ts',
};

const tier = (name, extra = {}) => ({
  ...base,
  displayName: name,
  testMatch: [`<rootDir>/test/${name}/**/*.test.ts`],
  ...extra,
});

/** @type {import('jest').Config} */
module.exports = {
  // Jest 30 reads testTimeout only from the global config (a per-project value is ignored), so this covers
  // every tier; it is sized for the server-backed ones (dev-server start, workflow bundling).
  testTimeout: 120_000,
  projects: [
    tier('unit', { setupFilesAfterEnv: ['<rootDir>/test/support/unit-timeout.ts'] }),
    // Workflow tests start their own TestWorkflowEnvironment (a dev server of their own) from TEST_TEMPORAL_CLI.
    tier('workflows', serverHooks),
    tier('replay'),
    tier('integration', serverHooks),
    tier('e2e', serverHooks),
  ],
};
