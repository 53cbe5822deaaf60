import { DefaultLogger, Runtime, type LogLevel } from '@temporalio/worker';
import type { Logger } from 'pino';

const LEVELS: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

/**
 * Routes the Temporal SDK's own logs (worker, bundler) into our structured log at WARN and above, so a
 * normal start is quiet, and leaves signals to the process's own shutdown. Must run before the first worker is created; later calls are ignored.
 */
export function installTemporalRuntime(log: Logger): void {
  try {
    Runtime.install({
      // No signal handlers of the SDK's own: the process's shutdown (lifecycle.ts) stops the worker in its turn,
      // after the API has drained, and a signal the SDK alone heeds (SIGQUIT, SIGUSR2) would stop the worker only.
      shutdownSignals: [],
      logger: new DefaultLogger('WARN', (entry) => {
        log[LEVELS[entry.level]]({ component: 'temporal-sdk', ...entry.meta }, entry.message);
      }),
    });
  } catch {
    // already installed (a second worker in the same process)
  }
}
