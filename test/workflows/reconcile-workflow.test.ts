/**
 * The ledger reconciliation workflow (the `cyxwiz-reconcile-ledger` schedule starts it) on a real Temporal dev server,
 * bundled from src/workflows like the worker bundles it, with a fake `reconcilePayments` activity.
 */
import { ScheduleOverlapPolicy } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { ReconcileReport } from '../../src/chain/reconcile';
import { loadConfig } from '../../src/config';
import { RECONCILE_WORKFLOW_ID } from '../../src/domain/ids';
import { ensureReconcileSchedule, RECONCILE_SCHEDULE_ID } from '../../src/main/worker-app';
import { reconcileLedgerWorkflow } from '../../src/workflows';
import { testTemporalCli } from '../support/env';
import { createJobTestEnv, uniqueTaskQueue } from './job-harness';

jest.setTimeout(30_000);

let env: TestWorkflowEnvironment;
let bundle: WorkflowBundleWithSourceMap;

// Starting a dev server and bundling the workflows is the slow part on a loaded machine: the global timeout's.
beforeAll(async () => {
  ({ env, bundle } = await createJobTestEnv(testTemporalCli()));
}, 120_000);

afterAll(async () => {
  await env?.teardown();
});

const REPORT: ReconcileReport = {
  completed: ['job-1/release_node', 'job-1/release_platform'],
  reopened: ['job-2/refund'],
  failed: [],
  inFlight: ['job-3/escrow'],
  mismatches: ['escrow of job-4 holds 5 units, the ledger says 7'],
  refundsPaid: [],
  refundErrors: [],
  checkedLegs: 4,
  checkedEscrows: 2,
  closedAccounts: 1,
};

test('reconcileLedgerWorkflow runs reconcilePayments once and returns its report', async () => {
  const taskQueue = uniqueTaskQueue('reconcile');
  let calls = 0;
  const worker = await Worker.create({
    connection: env.nativeConnection,
    namespace: env.namespace ?? 'default',
    taskQueue,
    workflowBundle: bundle,
    activities: {
      reconcilePayments: async (): Promise<ReconcileReport> => {
        calls += 1;
        return structuredClone(REPORT);
      },
    },
  });

  await worker.runUntil(async () => {
    const handle = await env.client.workflow.start(reconcileLedgerWorkflow, {
      workflowId: `reconcile-${Date.now().toString(36)}`,
      taskQueue,
    });
    expect(await handle.result()).toEqual(REPORT);
    expect(calls).toBe(1);

    // What an operator sees in the Web UI: the counts and every mismatch.
    const metadata = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
    expect(metadata.currentDetails).toContain('checked 4 in-flight legs and 2 escrows');
    expect(metadata.currentDetails).toContain('completed 2 · reopened 1 · failed 0 · in flight 1');
    expect(metadata.currentDetails).toContain('- escrow of job-4 holds 5 units, the ledger says 7');
  });
});

test("the worker's schedule: created once, then brought to the configured interval and task queue (one left on an unpolled queue would stop reconciling)", async () => {
  // The schedule's real id: this file starts a dev server of its own.
  const configFor = (intervalS: string, taskQueue: string) => loadConfig({ RECONCILE_INTERVAL_S: intervalS, TEMPORAL_TASK_QUEUE: taskQueue });
  const first = uniqueTaskQueue('reconcile-schedule');
  const second = uniqueTaskQueue('reconcile-schedule');
  const handle = env.client.schedule.getHandle(RECONCILE_SCHEDULE_ID);
  try {
    expect(await ensureReconcileSchedule(env.client, configFor('300', first))).toBe('created');
    expect(await ensureReconcileSchedule(env.client, configFor('300', first))).toBe('unchanged');
    expect(await ensureReconcileSchedule(env.client, configFor('60', second))).toBe('updated');
    const now = await handle.describe();
    expect(now.spec.intervals).toMatchObject([{ every: 60_000 }]);
    // Each run ends within 30 minutes: one left open on a queue nobody polls must not hold back every later run.
    expect(now.action).toMatchObject({ type: 'startWorkflow', workflowType: 'reconcileLedgerWorkflow', workflowId: RECONCILE_WORKFLOW_ID, taskQueue: second, workflowExecutionTimeout: 1_800_000 });
    expect(now.policies.overlap).toBe(ScheduleOverlapPolicy.SKIP);
    expect(await ensureReconcileSchedule(env.client, configFor('60', second))).toBe('unchanged');
  } finally {
    await handle.delete().catch(() => undefined);
  }
});
