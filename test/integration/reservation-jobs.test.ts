import { readFileSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { MIGRATIONS_DIR } from '../../src/db/client';
import * as nodesRepo from '../../src/db/nodes-repo';
import type { NodeRegistration } from '../../src/db/nodes-repo';
import * as reservationsRepo from '../../src/db/reservations-repo';
import { freshDatabase } from '../support/db';

const registration = {
  name: 'n', cpuCores: 8, ramTotal: 2 ** 35, ramAvailable: 2 ** 34, devices: [], ipAddress: '10.0.0.1', port: 50052,
  region: 'eu', walletAddress: '',
  profile: { version: '1', supportedFormats: [], maxModelSize: 0, supportsTerminalAccess: false, availableRuntimes: [], stakedAmount: 0 },
} as unknown as NodeRegistration;

/** A reservation's jobs_completed: each job once, whoever reports it, on real Postgres. */
describe('reservation job counts (real Postgres)', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  beforeAll(async () => {
    database = await freshDatabase();
  });
  afterAll(() => database.drop());

  async function reservation(opts: { userWallet?: string; owner?: string } = {}): Promise<{ id: string; nodeId: string }> {
    const id = `res-${randomUUID()}`;
    const nodeId = `node-${randomUUID()}`;
    await nodesRepo.upsertNode(database.db, nodeId, registration);
    const now = new Date();
    await reservationsRepo.holdNode(database.db, {
      id, nodeId, userWallet: opts.userWallet ?? 'w', owner: opts.owner, minutes: 60, pricePerHourUnits: 1n, escrowUnits: 1n, jobConfig: {}, minuteMs: 60_000,
      onlineSince: new Date(now.getTime() - 30_000), now,
    });
    return { id, nodeId };
  }

  it('with auth on, a user lists their own reservations and those made without auth, not another user\'s', async () => {
    const wallet = `w-${randomUUID()}`;
    const mine = await reservation({ userWallet: wallet, owner: 'user-1' });
    const theirs = await reservation({ userWallet: wallet, owner: 'user-2' });
    const anyones = await reservation({ userWallet: wallet });
    const ids = async (visibleTo?: string) =>
      (await reservationsRepo.listReservations(database.db, { wallet, activeOnly: false, limit: 10, visibleTo })).rows.map((r) => r.id).sort();
    expect(await ids('user-1')).toEqual([mine.id, anyones.id].sort());
    expect(await ids()).toEqual([mine.id, theirs.id, anyones.id].sort());
    expect((await reservationsRepo.listReservations(database.db, { wallet, activeOnly: false, limit: 10, visibleTo: 'user-1' })).total).toBe(2);
  });

  it('a pending reservation given up in Postgres gives its node back and is not activated when its escrow lands', async () => {
    const { id, nodeId } = await reservation();
    const held = async () => (await nodesRepo.getNode(database.db, nodeId))?.reservedBy;
    expect(await held()).toBe(id);
    expect(await reservationsRepo.abandonPending(database.db, id, 'withdrawn: no answer')).toBe(true);
    expect(await reservationsRepo.getReservation(database.db, id)).toMatchObject({ status: 'cancelled', endReason: 'withdrawn: no answer' });
    expect(await held()).toBeNull();
    const now = new Date();
    const activation = { startAt: now, endAt: new Date(now.getTime() + 60_000), escrowAccount: 'e', fundedBy: 'w' };
    expect(await reservationsRepo.activatePending(database.db, id, activation)).toBe(false);
    expect(await reservationsRepo.abandonPending(database.db, id, 'again')).toBe(false);

    // An active one is not given up.
    const other = await reservation();
    expect(await reservationsRepo.activatePending(database.db, other.id, activation)).toBe(true);
    expect(await reservationsRepo.abandonPending(database.db, other.id, 'too late')).toBe(false);
    expect(await reservationsRepo.getReservation(database.db, other.id)).toMatchObject({ status: 'active' });
  });

  it('counts a job once whoever reports it and however often, including reports at the same moment', async () => {
    const { id } = await reservation();
    const count = (jobId: string, reportedBy: 'node' | 'engine') => reservationsRepo.countJob(database.db, { reservationId: id, jobId, reportedBy, success: true });
    expect(await count('a', 'node')).toEqual({ jobs: 1, counted: true });
    expect(await count('a', 'engine')).toEqual({ jobs: 1, counted: false });
    expect(await count('a', 'node')).toEqual({ jobs: 1, counted: false });
    const racing = await Promise.all(Array.from({ length: 8 }, (_, i) => count('b', i % 2 ? 'node' : 'engine')));
    expect(racing.filter((r) => r.counted)).toHaveLength(1);
    expect(racing.map((r) => r.jobs)).toEqual(racing.map(() => 2)); // every answer after the count, racing or not
    expect((await reservationsRepo.getReservation(database.db, id))?.jobsCompleted).toBe(2);
    expect(await reservationsRepo.countJob(database.db, { reservationId: 'no-such-reservation', jobId: 'a', reportedBy: 'node', success: true }).catch((e: Error) => e.message)).toMatch(/foreign key|reservation_jobs/);
  });

  it('migration 0008 takes the jobs nodes reported before it from their reputation evidence', async () => {
    const { id, nodeId } = await reservation();
    for (const [job, kind] of [['x', 'job_completed'], ['y', 'job_failed'], ['y', 'job_completed']] as const) {
      await nodesRepo.recordReputationEvent(database.db, { nodeId, jobId: `${id}/${job}`, kind, reason: 'before the table' });
    }
    await nodesRepo.recordReputationEvent(database.db, { nodeId, jobId: `${id}x/other`, kind: 'job_completed', reason: 'another reservation' });
    const migration = readFileSync(path.join(MIGRATIONS_DIR, '0008_reservation_jobs.sql'), 'utf8').split('--> statement-breakpoint');
    const backfill = migration.find((statement) => statement.includes('INSERT INTO "reservation_jobs"'));
    expect(backfill).toBeDefined();
    await database.db.execute(sql.raw(backfill!));
    await database.db.execute(sql.raw(backfill!)); // and again: nothing twice

    const rows = await database.db.execute<{ job_id: string; success: boolean }>(sql`select job_id, success from reservation_jobs where reservation_id = ${id} order by job_id`);
    expect(rows.rows).toEqual([{ job_id: 'x', success: true }, { job_id: 'y', success: true }]);
    expect(await reservationsRepo.countJob(database.db, { reservationId: id, jobId: 'x', reportedBy: 'node', success: true })).toMatchObject({ counted: false });
  });
});
