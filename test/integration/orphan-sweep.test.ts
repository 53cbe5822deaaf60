import { randomUUID } from 'node:crypto';
import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import { eq } from 'drizzle-orm';
import pino from 'pino';
import * as jobsRepo from '../../src/db/jobs-repo';
import * as nodesRepo from '../../src/db/nodes-repo';
import * as reservationsRepo from '../../src/db/reservations-repo';
import type { NodeRegistration } from '../../src/db/nodes-repo';
import { nodeClaims, payments } from '../../src/db/schema';
import type { JobSpec } from '../../src/domain/job';
import { createJobWorkflowGateway } from '../../src/services/job-workflows';
import { createJobService } from '../../src/services/jobs-service';
import { createOrphanSweep, NEVER_STARTED_REASON } from '../../src/services/orphan-sweep';
import { freshDatabase } from '../support/db';
import { testTemporalAddress, testTemporalNamespace } from '../support/env';

const GiB = 2 ** 30;
const SWEEP_AFTER_MS = 30_000;
const OPTIONS = { heartbeatTimeoutMs: 30_000, maxAttempts: 3, maxRuntimeMs: 3600_000, requeueIntervalMs: 30_000, assignTimeoutMs: 5000, historyEventLimit: 10_000 };

const registration: NodeRegistration = {
  name: 'n', cpuCores: 8, ramTotal: 32 * GiB, ramAvailable: 16 * GiB, devices: [], ipAddress: '10.0.0.1', port: 50052,
  region: 'eu', walletAddress: '',
  profile: { version: '1', supportedFormats: [], maxModelSize: 0, supportsTerminalAccess: false, availableRuntimes: [], stakedAmount: 0 },
} as unknown as NodeRegistration;

const spec = (jobId: string): JobSpec => ({
  jobId, jobType: 'TRAINING', priority: 'NORMAL', modelDefinition: '', hyperparameters: {}, datasetUri: 'x', batchSize: 1,
  epochs: 1, requiredDevice: 'CPU', estimatedMemory: 0, estimatedDuration: 0, paymentUnits: '10', paymentAddress: '',
  escrowTxHash: '', reservationDurationMinutes: 0,
});

/**
 * What an API process leaves half-done when it stops between writing a row and starting its workflow: the
 * worker's sweep finishes it, on real Postgres and the real Temporal server (no worker polls the task queue,
 * so a started workflow just waits there).
 */
describe('orphan sweep (real Postgres and Temporal)', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let connection: Connection;
  let client: Client;
  const taskQueue = `orphans-${randomUUID()}`;
  const started: string[] = [];

  beforeAll(async () => {
    database = await freshDatabase();
    connection = await Connection.connect({ address: testTemporalAddress() });
    client = new Client({ connection, namespace: testTemporalNamespace() });
  });
  afterAll(async () => {
    await Promise.all(started.map((id) => client.workflow.getHandle(id).terminate('test over').catch(() => undefined)));
    await connection.close();
    await database.drop();
  });

  function sweeper(nowMs: () => number) {
    const gateway = createJobWorkflowGateway({ client, taskQueue, options: OPTIONS, tokenDecimals: 9 });
    return createOrphanSweep({ db: database.db, client, gateway, log: pino({ level: 'silent' }), olderThanMs: SWEEP_AFTER_MS, now: nowMs });
  }

  async function holdFor(reservationId: string, nodeId: string) {
    await nodesRepo.upsertNode(database.db, nodeId, registration);
    const now = new Date();
    return reservationsRepo.holdNode(database.db, {
      id: reservationId, nodeId, userWallet: 'w', minutes: 60, pricePerHourUnits: 100n, escrowUnits: 100n, jobConfig: {},
      minuteMs: 60_000, onlineSince: new Date(now.getTime() - 30_000), now,
    });
  }

  /** Sweeps until `done` holds for what `read` returns (the list of closed workflows may lag a moment), for up to 15 s. */
  async function sweepUntil<T>(read: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      await sweeper(() => Date.now()).sweep();
      const value = await read();
      if (done(value) || Date.now() > deadline) return value;
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  const workflowExists = async (id: string) =>
    client.workflow.getHandle(id).describe().then(
      () => true,
      (err) => {
        if (err instanceof WorkflowNotFoundError) return false;
        throw err;
      },
    );

  it('gives back the node of a reservation whose workflow never started, and says why', async () => {
    const id = `res-${randomUUID()}`;
    const nodeId = `node-${randomUUID()}`;
    await holdFor(id, nodeId);

    await sweeper(() => Date.now()).sweep(); // too young: ReserveNode may still be starting it
    expect((await reservationsRepo.getReservation(database.db, id))?.status).toBe('pending');
    expect((await nodesRepo.getNode(database.db, nodeId))?.reservedBy).toBe(id);

    await sweeper(() => Date.now() + SWEEP_AFTER_MS + 1000).sweep();
    const after = await reservationsRepo.getReservation(database.db, id);
    expect(after).toMatchObject({ status: 'failed', endReason: NEVER_STARTED_REASON });
    expect(after?.endedAt).toBeInstanceOf(Date);
    expect((await nodesRepo.getNode(database.db, nodeId))?.reservedBy).toBeNull();
    expect(await workflowExists(id)).toBe(false);
  });

  it('leaves alone a pending reservation whose workflow exists (its escrow may still be on its way)', async () => {
    const id = `res-${randomUUID()}`;
    const nodeId = `node-${randomUUID()}`;
    await holdFor(id, nodeId);
    await client.workflow.start('reservationWorkflow', { workflowId: id, taskQueue, args: [] });
    started.push(id);

    await sweeper(() => Date.now() + SWEEP_AFTER_MS + 1000).sweep();
    expect((await reservationsRepo.getReservation(database.db, id))?.status).toBe('pending');
    expect((await nodesRepo.getNode(database.db, nodeId))?.reservedBy).toBe(id);
  });

  it('starts the workflow of a job recorded while Temporal was unreachable, once', async () => {
    const jobId = `job-${randomUUID()}`;
    await jobsRepo.insertJob(database.db, { spec: spec(jobId), configHash: 'h' });
    started.push(jobId);

    await sweeper(() => Date.now()).sweep();
    expect(await workflowExists(jobId)).toBe(false);

    const later = sweeper(() => Date.now() + SWEEP_AFTER_MS + 1000);
    await later.sweep();
    const first = await client.workflow.getHandle(jobId).describe();
    expect(first.taskQueue).toBe(taskQueue);
    await later.sweep(); // still pending (no worker here): starting again is a no-op
    expect((await client.workflow.getHandle(jobId).describe()).runId).toBe(first.runId);
  });

  it('a job submitted while Temporal is unreachable is the caller\'s (its id, no error) and recorded; the sweep starts it', async () => {
    // Nothing listens there: the client gives up after its own retries (about 20 s).
    const deadClient = new Client({ connection: Connection.lazy({ address: '127.0.0.1:1' }) });
    const jobs = createJobService({
      db: database.db,
      workflows: createJobWorkflowGateway({ client: deadClient, taskQueue, options: OPTIONS, tokenDecimals: 9, callLimitMs: 1000 }),
      verifyEscrow: async () => undefined,
      p2p: { secret: 's', tokenTtlS: 60 },
    });
    const jobId = `job-${randomUUID()}`;
    started.push(jobId);
    const submitted = await jobs.submit(spec(jobId)).finally(() => deadClient.connection.close().catch(() => undefined));
    expect(submitted).toMatchObject({ jobId, created: true, startDeferred: expect.stringMatching(/^Temporal/) });
    expect(await jobsRepo.getJob(database.db, jobId)).toMatchObject({ status: 'pending' });
    expect(await workflowExists(jobId)).toBe(false);

    await sweeper(() => Date.now() + SWEEP_AFTER_MS + 1000).sweep();
    expect(await workflowExists(jobId)).toBe(true);
  });

  it('fails a queued job whose workflow was terminated outside the server, naming why, and gives its claim back', async () => {
    const jobId = `job-${randomUUID()}`;
    const nodeId = `node-${randomUUID()}`;
    await nodesRepo.upsertNode(database.db, nodeId, registration);
    await jobsRepo.insertJob(database.db, { spec: spec(jobId), configHash: 'h' });
    await jobsRepo.recordTransition(database.db, { jobId, seq: 1, from: 'pending', to: 'queued', reason: 'waiting', actor: 'workflow', attempt: 0 });
    await database.db.insert(nodeClaims).values({ nodeId, jobId });
    await client.workflow.start('jobWorkflow', { workflowId: jobId, taskQueue, args: [] });
    await client.workflow.getHandle(jobId).terminate('operator clean-up');

    const job = await sweepUntil(() => jobsRepo.getJob(database.db, jobId), (j) => j?.status === 'failed');
    expect(job).toMatchObject({ status: 'failed', errorMessage: expect.stringContaining('its workflow was terminated outside the server') });
    expect(await database.db.select().from(nodeClaims).where(eq(nodeClaims.jobId, jobId))).toEqual([]);
    const seq = job!.eventSeq;
    await sweeper(() => Date.now()).sweep(); // ended: left alone
    expect((await jobsRepo.getJob(database.db, jobId))!.eventSeq).toBe(seq);
  });

  it('notes a job that ended before its refund landed whose workflow was then terminated: its escrow is still held, once', async () => {
    const jobId = `job-${randomUUID()}`;
    await jobsRepo.insertJob(database.db, { spec: spec(jobId), configHash: 'h' });
    await jobsRepo.recordTransition(database.db, { jobId, seq: 1, from: 'pending', to: 'cancelled', reason: 'cancelled: no; refunding the escrow', actor: 'client', attempt: 0, ended: true });
    await database.db.insert(payments).values({
      jobId, leg: 'escrow', amount: 10n, fromAccount: 'payer', toAccount: 'escrow', state: 'confirmed', idempotencyKey: `${jobId}/escrow`,
    });
    await database.db.insert(payments).values({
      jobId, leg: 'refund', amount: 10n, fromAccount: 'escrow', toAccount: 'payer', state: 'pending', idempotencyKey: `${jobId}/refund`,
    });
    await client.workflow.start('jobWorkflow', { workflowId: jobId, taskQueue, args: [] });
    await client.workflow.getHandle(jobId).terminate('operator clean-up');

    const job = await sweepUntil(() => jobsRepo.getJob(database.db, jobId), (j) => j?.eventSeq === 2);
    expect(job).toMatchObject({ status: 'cancelled', eventSeq: 2 });
    const events = await jobsRepo.getJobEvents(database.db, jobId);
    expect(events.at(-1)).toMatchObject({
      fromStatus: 'cancelled',
      toStatus: 'cancelled',
      actor: 'sweep',
      reason: `cancelled, and then its workflow was terminated outside the server before its refund landed: its refund is recorded, and the reconciliation pays it once its payer's token account can receive (see its payments in GET /api/jobs/${jobId})`,
    });
    await sweeper(() => Date.now()).sweep(); // noted: not again
    expect((await jobsRepo.getJob(database.db, jobId))!.eventSeq).toBe(2);
  });

  it('fails a reservation whose workflow was terminated outside the server, and gives its node back', async () => {
    const id = `res-${randomUUID()}`;
    const nodeId = `node-${randomUUID()}`;
    await holdFor(id, nodeId);
    await reservationsRepo.updateReservation(database.db, id, { status: 'active' });
    await client.workflow.start('reservationWorkflow', { workflowId: id, taskQueue, args: [] });
    await client.workflow.getHandle(id).terminate('operator clean-up');

    const row = await sweepUntil(() => reservationsRepo.getReservation(database.db, id), (r) => r?.status === 'failed');
    expect(row).toMatchObject({ status: 'failed', endReason: expect.stringContaining('its workflow was terminated outside the server') });
    expect((await nodesRepo.getNode(database.db, nodeId))?.reservedBy).toBeNull();
  });

  it('says so when the reservation was stopped while settling: what moved is in its payment legs', async () => {
    const id = `res-${randomUUID()}`;
    const nodeId = `node-${randomUUID()}`;
    await holdFor(id, nodeId);
    await reservationsRepo.updateReservation(database.db, id, { status: 'completing', endReason: 'released by the engine: done' });
    await client.workflow.start('reservationWorkflow', { workflowId: id, taskQueue, args: [] });
    await client.workflow.getHandle(id).terminate('settlement failed');

    const row = await sweepUntil(() => reservationsRepo.getReservation(database.db, id), (r) => r?.status === 'failed');
    expect(row?.endReason).toMatch(/^its workflow was terminated outside the server while settling \(released by the engine: done\); what moved is in its payment legs/);
  });

  it('leaves alone a job whose terminated run was followed by another (a Reset in the Web UI)', async () => {
    const jobId = `job-${randomUUID()}`;
    await jobsRepo.insertJob(database.db, { spec: spec(jobId), configHash: 'h' });
    await jobsRepo.recordTransition(database.db, { jobId, seq: 1, from: 'pending', to: 'queued', reason: 'waiting', actor: 'workflow', attempt: 0 });
    await client.workflow.start('jobWorkflow', { workflowId: jobId, taskQueue, args: [] });
    await client.workflow.getHandle(jobId).terminate('reset');
    await client.workflow.start('jobWorkflow', { workflowId: jobId, taskQueue, args: [], workflowIdReusePolicy: 'ALLOW_DUPLICATE' });
    started.push(jobId);
    // Until the closed run shows in the list, and a moment after: the job stays as its running run has it.
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline) {
      await sweeper(() => Date.now()).sweep();
      await new Promise((r) => setTimeout(r, 200));
    }
    expect((await jobsRepo.getJob(database.db, jobId))?.status).toBe('queued');
  });
});
