import type { Logger } from 'pino';

/**
 * Runs `stop` once on SIGINT/SIGTERM and exits; a second signal exits at once.
 */
export function onShutdownSignal(log: Logger, stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'shutting down');
    stop().then(
      () => process.exit(), // 0, unless something already failed (process.exitCode)
      (err) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

/** Reads a required setting for processes that run against external services. */
export function required<T>(value: T | undefined, name: string): T {
  if (value === undefined || value === '') {
    throw new Error(`${name} must be set (npm run start:api / start:worker run against an external Postgres and Temporal; npm start runs everything embedded)`);
  }
  return value;
}
