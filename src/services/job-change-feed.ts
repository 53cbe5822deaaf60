import { Client } from 'pg';
import { JOB_CHANGES_CHANNEL } from '../db/jobs-repo';

/** How often the LISTEN connection is probed: a path dropped silently (a NAT or load balancer) sends no error. */
const PROBE_EVERY_MS = 30_000;
const PROBE_TIMEOUT_MS = 10_000;

/**
 * Fans Postgres notifications of job changes out to in-process listeners (StreamJobUpdates), over one
 * dedicated LISTEN connection that reconnects when it drops or stops answering.
 */
export function createJobChangeFeed(opts: { databaseUrl: string; log: { warn(obj: object, msg: string): void } }) {
  // By job id. Not an EventEmitter: a job id is any string the client chose, "error" included.
  const listeners = new Map<string, Set<() => void>>();
  let client: Client | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  let probe: NodeJS.Timeout | undefined;

  function notify(jobId: string): void {
    for (const listener of listeners.get(jobId) ?? []) {
      try {
        listener();
      } catch (err) {
        opts.log.warn({ err: String(err), jobId }, 'a job change listener failed');
      }
    }
  }

  /** The connection being made or in use; any other one's events are stale. */
  let current: Client | undefined;

  async function connect(): Promise<void> {
    const c = new Client({ connectionString: opts.databaseUrl, keepAlive: true });
    current = c;
    c.on('notification', (msg) => {
      if (c === current && msg.channel === JOB_CHANGES_CHANNEL && msg.payload) notify(msg.payload);
    });
    c.on('error', (err) => lost(c, err));
    try {
      await c.connect();
      await c.query(`LISTEN ${JOB_CHANGES_CHANNEL}`);
    } catch (err) {
      void c.end().catch(() => undefined);
      throw err;
    }
    if (closed || c !== current) {
      await c.end().catch(() => undefined);
      return;
    }
    client = c;
    // Listeners may have missed changes while disconnected: nudge them all to re-read.
    for (const jobId of [...listeners.keys()]) notify(jobId);
  }

  function lost(c: Client, err: unknown): void {
    void c.end().catch(() => undefined);
    if (c !== current) return; // an older connection, already replaced
    opts.log.warn({ err: String(err) }, 'job change feed lost its connection; reconnecting');
    current = undefined;
    scheduleReconnect();
  }

  function scheduleReconnect(): void {
    client = undefined;
    if (closed || retry) return;
    retry = setTimeout(() => {
      retry = undefined;
      connect().catch(() => scheduleReconnect());
    }, 1000);
  }

  /** Asks the connection to answer within PROBE_TIMEOUT_MS; one that does not is dropped and made anew. */
  function startProbing(): void {
    probe = setInterval(() => {
      const c = client;
      if (!c) return;
      let timer: NodeJS.Timeout | undefined;
      const silent = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${PROBE_TIMEOUT_MS} ms`)), PROBE_TIMEOUT_MS);
      });
      Promise.race([c.query('select 1'), silent])
        .catch((err: unknown) => lost(c, err))
        .finally(() => clearTimeout(timer));
    }, PROBE_EVERY_MS);
    probe.unref();
  }

  /** Calls `listener` whenever the job's row changes. @returns the unsubscribe function. */
  function subscribe(jobId: string, listener: () => void): () => void {
    let set = listeners.get(jobId);
    if (!set) listeners.set(jobId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && listeners.get(jobId) === set) listeners.delete(jobId);
    };
  }

  async function start(): Promise<void> {
    await connect();
    startProbing();
  }

  async function close(): Promise<void> {
    closed = true;
    if (retry) clearTimeout(retry);
    if (probe) clearInterval(probe);
    const c = current;
    current = undefined;
    await c?.end().catch(() => undefined);
  }

  return { start, subscribe, close };
}

export type JobChangeFeed = ReturnType<typeof createJobChangeFeed>;
