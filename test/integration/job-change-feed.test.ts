import { sql } from 'drizzle-orm';
import { JOB_CHANGES_CHANNEL } from '../../src/db/jobs-repo';
import { createJobChangeFeed, type JobChangeFeed } from '../../src/services/job-change-feed';
import { freshDatabase } from '../support/db';

/** The fan-out of Postgres job-change notifications to StreamJobUpdates, over real Postgres. */
describe('job change feed', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let feed: JobChangeFeed;
  const warnings: string[] = [];

  beforeAll(async () => {
    database = await freshDatabase();
    feed = createJobChangeFeed({ databaseUrl: database.url, log: { warn: (_obj, msg) => void warnings.push(msg) } });
    await feed.start();
  });
  afterAll(async () => {
    await feed?.close();
    await database?.drop();
  });

  const changed = (jobId: string) => database.db.execute(sql`select pg_notify(${JOB_CHANGES_CHANNEL}, ${jobId})`);
  const heard = (jobId: string, withinMs = 5000) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no notification for ${jobId}`)), withinMs);
      const off = feed.subscribe(jobId, () => {
        clearTimeout(timer);
        off();
        resolve();
      });
    });

  test('any job id a client chose is only a name: "error" and "__proto__" notify their listeners and harm nothing', async () => {
    for (const jobId of ['error', '__proto__', 'constructor', 'job-1']) {
      // Nobody listens yet: the notification goes nowhere (an EventEmitter threw on an unheard "error" and the process died).
      await changed(jobId);
      const listening = heard(jobId);
      await changed(jobId);
      await listening;
    }
  });

  test('a dropped LISTEN connection is made anew, and every listener is told to read again (it may have missed changes)', async () => {
    let calls = 0;
    const off = feed.subscribe('job-reconnect', () => void (calls += 1));
    try {
      await database.db.execute(sql`select pg_terminate_backend(pid) from pg_stat_activity where query like ${`LISTEN ${JOB_CHANGES_CHANNEL}%`} and datname = current_database()`);
      for (let i = 0; i < 100 && calls === 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect(calls).toBe(1); // the nudge after reconnecting
      const listening = heard('job-reconnect');
      await changed('job-reconnect');
      await listening;
      expect(warnings).toContain('job change feed lost its connection; reconnecting');
    } finally {
      off();
    }
  });

  test('a listener that throws neither stops the others nor the feed', async () => {
    const offBad = feed.subscribe('job-bad', () => {
      throw new Error('boom');
    });
    const listening = heard('job-bad');
    await changed('job-bad');
    await listening;
    offBad();
    expect(warnings).toContain('a job change listener failed');
    const after = heard('job-after');
    await changed('job-after');
    await after;
  });
});
