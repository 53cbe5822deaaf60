import pino, { type Logger } from 'pino';
import type { Config } from '../config';

/** Structured logs on stdout; secrets never enter them (the config's secrets are redacted by path too). */
export function createLogger(config: Pick<Config, 'logLevel'>, name: string): Logger {
  return pino({
    name,
    level: config.logLevel,
    redact: { paths: ['*.secret', '*.p2p.secret', 'secret', 'authorization', '*.authorization'], censor: '[redacted]' },
  });
}
