import type { Logger } from '@temporalio/common';

/** A Temporal logger that drops everything: for tests that fail activities on purpose. */
export const silentLogger: Logger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};
