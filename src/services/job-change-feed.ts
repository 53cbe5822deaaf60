import { EventEmitter } from 'node:events';
import { Client } from 'pg';
import { JOB_CHANGES_CHANNEL } from '../db/jobs-repo';

/**
 * Fans Postgres notifications of job changes out to in-process listeners (StreamJobUpdates), over one
 * dedicated LISTEN connection that reconnects when it drops.
 */
export function createJobChangeFeed(opts: { databaseUrl: string; log: { warn(obj: object, msg: string): void } }) {
  const emitter = new EventEmitter();
  emitter.setMaxListeners(0);
  let client: Client | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;

  async function connect(): Promise<void> {
    const c = new Client({ connectionString: opts.databaseUrl });
    c.on('notification', (msg) => {
      if (msg.channel === JOB_CHANGES_CHANNEL && msg.payload) emitter.emit(msg.payload);
    });
    c.on('error', (err) => {
      opts.log.warn({ err: String(err) }, 'job change feed lost its connection; reconnecting');
      void c.end().catch(() => undefined);
      scheduleReconnect();
    });
    await c.connect();
    await c.query(`LISTEN ${JOB_CHANGES_CHANNEL}`);
    client = c;
    // Listeners may have missed changes while disconnected: nudge them all to re-read.
    for (const name of emitter.eventNames()) emitter.emit(name);
  }

  function scheduleReconnect(): void {
    client = undefined;
    if (closed || retry) return;
    retry = setTimeout(() => {
      retry = undefined;
      connect().catch(() => scheduleReconnect());
    }, 1000);
  }

  /** Calls `listener` whenever the job's row changes. @returns the unsubscribe function. */
  function subscribe(jobId: string, listener: () => void): () => void {
    emitter.on(jobId, listener);
    return () => emitter.off(jobId, listener);
  }

  async function close(): Promise<void> {
    closed = true;
    if (retry) clearTimeout(retry);
    await client?.end().catch(() => undefined);
  }

  return { start: connect, subscribe, close };
}

export type JobChangeFeed = ReturnType<typeof createJobChangeFeed>;
