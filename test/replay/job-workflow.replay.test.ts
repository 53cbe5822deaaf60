/**
 * Replays recorded histories of the job workflow (test/replay/histories, written by scripts/record-histories.ts)
 * against the current workflow code. A change to the workflow's command sequence (activities, timers, markers of
 * local activities, search-attribute upserts, continue-as-new) breaks replay of jobs already running in production;
 * such a change must be guarded with `patched()` and these histories must keep replaying.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DeterminismViolationError } from '@temporalio/workflow';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { previousHistories, recordedHistories } from './histories';

interface JsonEvent {
  eventType: string;
  activityTaskScheduledEventAttributes?: { activityType?: { name?: string } };
  [key: string]: unknown;
}

let workflowBundle: WorkflowBundleWithSourceMap;

beforeAll(async () => {
  // The tampered histories below make the SDK log nondeterminism warnings on purpose; errors still show.
  Runtime.install({
    logger: new DefaultLogger('ERROR'),
    telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, forward: {} } },
  });
  // Bundled once (about 1 s) instead of once per replay with `workflowsPath`.
  workflowBundle = await bundleWorkflowCode({
    workflowsPath: require.resolve('../../src/workflows'),
    logger: new DefaultLogger('WARN'),
  });
});

const load = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8')) as { events: JsonEvent[] };
const histories = recordedHistories();
const previous = previousHistories();

test('the recorded scenarios are all there', () => {
  expect(histories.map((h) => path.basename(h.file))).toEqual([
    'cancelled.json',
    'continued-as-new.run-first.json',
    'continued-as-new.run-last.json',
    'escrow-refused.json',
    'failed.json',
    'happy.json',
    'node-lost-reassigned.json',
    'owed.json',
  ]);
});

test.each(histories.map((h) => [path.basename(h.file), h] as const))('%s replays without nondeterminism', async (_name, { file, workflowId }) => {
  await Worker.runReplayHistory({ workflowBundle }, load(file), workflowId);
});

describe('histories of earlier workflow versions (jobs still running when this code deploys)', () => {
  test('are kept', () => {
    // The version before the Solana settlement: payments on the Postgres ledger, no owed payments, no attempt clock.
    expect(previous.map((h) => h.label)).toEqual(
      expect.arrayContaining([
        '54a77f9-postgres-ledger/cancelled.json',
        '54a77f9-postgres-ledger/continued-as-new.run-first.json',
        '54a77f9-postgres-ledger/continued-as-new.run-last.json',
        '54a77f9-postgres-ledger/failed.json',
        '54a77f9-postgres-ledger/happy.json',
        '54a77f9-postgres-ledger/node-lost-reassigned.json',
      ]),
    );
  });

  test.each(previous.map((h) => [h.label, h] as const))('%s replays without nondeterminism', async (_label, { file, workflowId }) => {
    await Worker.runReplayHistory({ workflowBundle }, load(file), workflowId);
  });
});

describe('replay catches a changed command sequence', () => {
  const happy = histories.find((h) => h.file.endsWith('happy.json'))!;

  test('an activity the workflow no longer schedules there', async () => {
    const history = load(happy.file);
    const release = history.events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'release');
    expect(release).toBeDefined();
    release!.activityTaskScheduledEventAttributes!.activityType!.name = 'refund';
    await expect(Worker.runReplayHistory({ workflowBundle }, history, happy.workflowId)).rejects.toBeInstanceOf(DeterminismViolationError);
  });

  test('a command the recorded run did not make (an added search-attribute upsert)', async () => {
    const history = load(happy.file);
    const index = history.events.findIndex((e) => e.eventType === 'EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES');
    expect(index).toBeGreaterThan(0);
    // Drop the first upsert and renumber: to the current code this reads as a run recorded before the upsert existed.
    history.events.splice(index, 1);
    history.events.forEach((e, i) => (e.eventId = String(i + 1)));
    await expect(Worker.runReplayHistory({ workflowBundle }, history, happy.workflowId)).rejects.toBeInstanceOf(DeterminismViolationError);
  });
});
