import { msToNumber } from '@temporalio/common/lib/time';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { registerSearchAttributes } from '../infra/search-attributes';
import type { Logger } from 'pino';
import { createAssignActivity, createDispatchActivities } from '../activities/dispatch';
import { relayFreshMs } from '../services/heartbeat-hub';
import { createJobActivities } from '../activities/jobs';
import { createPaymentActivities, heartbeating } from '../activities/payments';
import { createReservationActivities } from '../activities/reservations';
import { ScheduleAlreadyRunning, ScheduleOverlapPolicy, type Client as TemporalClient } from '@temporalio/client';
import type { ChainContext } from '../chain/context';
import { reconcileLedger } from '../chain/reconcile';
import type { Config } from '../config';
import { settlementFor } from './chain-setup';
import { reconcileLedgerWorkflow } from '../workflows/reconcile-workflow';
import { temporalConnectionOptions } from './temporal-connection';
import { installTemporalRuntime } from './temporal-runtime';
import { openDatabase } from '../db/client';
import { RECONCILE_WORKFLOW_ID } from '../domain/ids';
import * as jobsRepo from '../db/jobs-repo';
import { createNodeCache } from '../db/node-cache';
import { createJobWorkflowGateway } from '../services/job-workflows';
import { createOrphanSweep } from '../services/orphan-sweep';
import { jobWorkflowOptions } from './workflow-options';

export interface RunningWorker {
  stop(): Promise<void>;
  /** Resolves when the worker stops (by stop() or a fatal error). */
  done: Promise<void>;
}

/** Id of the schedule that runs the ledger-vs-chain reconciliation. */
export const RECONCILE_SCHEDULE_ID = 'cyxwiz-reconcile-ledger';
/**
 * A reconciliation run ends by then whatever happens (the schedule skips a run while one is open: one left waiting
 * on a task queue no worker polls any more would otherwise stop them all).
 */
const RECONCILE_RUN_TIMEOUT = '30 minutes';

/** How often the worker finishes what a stopped API left half-done (see createOrphanSweep), and after how long. */
const ORPHAN_SWEEP_MS = 30_000;

/** Composition root of the worker process: runs job workflows and their activities. */
export async function startWorker(
  config: Config,
  env: { databaseUrl: string; temporalAddress: string; chain: ChainContext; log: Logger },
): Promise<RunningWorker> {
  const { log } = env;
  installTemporalRuntime(log);
  const database = openDatabase(env.databaseUrl, { max: 20 });
  const dispatch = createDispatchActivities({ timeoutMs: config.nodes.assignTimeoutMs, tokenDecimals: config.payments.tokenDecimals });
  const clientConnection = await Connection.connect(temporalConnectionOptions(config, env.temporalAddress));
  const client = new Client({ connection: clientConnection, namespace: config.temporal.namespace });
  const gateway = createJobWorkflowGateway({
    client,
    taskQueue: config.temporal.taskQueue,
    options: jobWorkflowOptions(config),
    tokenDecimals: config.payments.tokenDecimals,
  });
  const settlement = settlementFor(config, env.chain, database.db);
  // Matching ranks this copy of the node registry as it stands; it refreshes in the background (started below).
  const nodeCache = createNodeCache({
    db: database.db,
    offlineAfterMs: config.nodes.offlineAfterMs,
    onError: (err) => log.warn({ err: String(err) }, 'node cache refresh failed'),
  });
  const wakeQueued = async (nodeIds: string[]) =>
    gateway.nodesChanged(await jobsRepo.waitingJobsFor(database.db, nodeIds, config.payments.tokenDecimals));
  const jobActivities = createJobActivities({
    db: database.db,
    nodes: nodeCache,
    assignPortOffset: config.nodes.assignPortOffset,
    tokenDecimals: config.payments.tokenDecimals,
    heartbeatTimeoutMs: config.jobs.heartbeatTimeoutMs,
    relayFreshMs: relayFreshMs(config.nodes.heartbeatFlushMs),
    wakeQueued,
  });
  const activities = {
    ...jobActivities,
    ...createPaymentActivities({ settlement }),
    ...createReservationActivities({
      db: database.db,
      settlement,
      wakeQueued,
      nodeHeartbeatTimeoutMs: config.reservations.nodeTimeoutMs,
    }),
    ...dispatch.activities,
    ...createAssignActivity({
      dispatchToNode: dispatch.activities.dispatchToNode,
      recordTransition: jobActivities.recordTransition,
      recordRefusal: (jobId, nodeId) => jobsRepo.recordRefusal(database.db, jobId, nodeId),
    }),
    // Heartbeats while it works: against a real cluster, one pass (an RPC per leg and escrow) outlasts the
    // activity's heartbeat timeout.
    reconcilePayments: async () => {
      const report = await heartbeating(() =>
        reconcileLedger({
          db: database.db,
          settlement,
          staleAfterMs: 2 * config.chain.confirmTimeoutMs,
          recentMs: 24 * 3600_000,
          // Within the activity's 10 minutes whatever the cluster's pace.
          closeAccounts: { settledForMs: 3600_000, limit: 100, budgetMs: 3 * 60_000 },
          closeUnused: { unusedForMs: 24 * 3600_000, limit: 100, budgetMs: 2 * 60_000 },
          settleRefunds: { quietForMs: 10 * 60_000, limit: 100, budgetMs: 2 * 60_000 },
          // Last: the checks of recently active jobs (one RPC call or more each) only report.
          checkBudgetMs: 90_000,
        }),
      );
      // In the worker's log too, at error level, for whatever watches it: money the chain and the ledger disagree on.
      if (report.mismatches.length > 0) log.error({ mismatches: report.mismatches }, 'ledger and chain disagree');
      if (report.refundErrors.length > 0) log.warn({ refunds: report.refundErrors }, 'recorded refunds that could not be paid yet');
      return report;
    },
  };
  // Job workflows upsert these; an external cluster gets them registered here (a no-op when present).
  await registerSearchAttributes(clientConnection, config.temporal.namespace, log);
  const connection = await NativeConnection.connect(temporalConnectionOptions(config, env.temporalAddress));
  const worker = await Worker.create({
    connection,
    namespace: config.temporal.namespace,
    taskQueue: config.temporal.taskQueue,
    workflowsPath: require.resolve('../workflows'),
    activities,
    // Running activities may finish: a settlement waits up to CHAIN_CONFIRM_TIMEOUT_MS for its confirmation
    // (cut short, it is safe, only slower: the next attempt finds the recorded signature).
    shutdownGraceTime: '60 seconds',
  });

  const schedule = await ensureReconcileSchedule(client, config, (err) =>
    // The schedule exists and runs as it was: no reason to keep the worker from starting.
    log.warn({ err, schedule: RECONCILE_SCHEDULE_ID }, 'could not bring the reconciliation schedule to this configuration'),
  );
  if (schedule !== 'unchanged') log.info({ schedule: RECONCILE_SCHEDULE_ID, everyMs: config.chain.reconcileIntervalMs, taskQueue: config.temporal.taskQueue }, `reconciliation schedule ${schedule}`);

  const { sweep } = createOrphanSweep({ db: database.db, client, gateway, log, olderThanMs: ORPHAN_SWEEP_MS });
  const timer = setInterval(() => void sweep().catch((err) => log.warn({ err: String(err) }, 'orphan sweep failed')), ORPHAN_SWEEP_MS);
  timer.unref();

  nodeCache.start();
  const done = worker.run().finally(async () => {
    clearInterval(timer);
    await nodeCache.stop();
    dispatch.close();
    await clientConnection.close();
    await connection.close();
    await database.close();
  });
  log.info({ taskQueue: config.temporal.taskQueue }, 'worker running');
  return {
    done,
    stop: async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}

/**
 * Creates the reconciliation schedule, or brings an existing one to the configured interval and task queue: a
 * schedule left on a task queue no worker polls any more would stop reconciling without a sign.
 * @returns what it did.
 */
export async function ensureReconcileSchedule(
  client: TemporalClient,
  config: Config,
  /** An existing schedule could not be read or updated (it runs as it was); unset: thrown. */
  onUpdateError?: (err: unknown) => void,
): Promise<'created' | 'updated' | 'unchanged' | 'kept'> {
  const every = config.chain.reconcileIntervalMs;
  const taskQueue = config.temporal.taskQueue;
  try {
    await client.schedule.create({
      scheduleId: RECONCILE_SCHEDULE_ID,
      spec: { intervals: [{ every }] },
      action: { type: 'startWorkflow', workflowType: reconcileLedgerWorkflow, workflowId: RECONCILE_WORKFLOW_ID, taskQueue, workflowExecutionTimeout: RECONCILE_RUN_TIMEOUT },
      policies: { overlap: ScheduleOverlapPolicy.SKIP },
    });
    return 'created';
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  try {
    const handle = client.schedule.getHandle(RECONCILE_SCHEDULE_ID);
    const current = await handle.describe();
    const intervals = current.spec.intervals ?? [];
    const runTimeoutMs = msToNumber(RECONCILE_RUN_TIMEOUT);
    if (intervals.length === 1 && intervals[0].every === every && current.action.taskQueue === taskQueue && current.action.workflowExecutionTimeout === runTimeoutMs) return 'unchanged';
    await handle.update((prev) => ({ ...prev, spec: { ...prev.spec, intervals: [{ every }] }, action: { ...prev.action, taskQueue, workflowExecutionTimeout: RECONCILE_RUN_TIMEOUT } }));
    return 'updated';
  } catch (err) {
    if (!onUpdateError) throw err;
    onUpdateError(err);
    return 'kept';
  }
}
