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
 * normal start is quiet. Must run before the first worker is created; later calls are ignored.
 */
export function installTemporalRuntime(log: Logger): void {
  try {
    Runtime.install({
      logger: new DefaultLogger('WARN', (entry) => {
        log[LEVELS[entry.level]]({ component: 'temporal-sdk', ...entry.meta }, entry.message);
      }),
    });
  } catch {
    // already installed (a second worker in the same process)
  }
}
