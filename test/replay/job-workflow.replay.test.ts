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
    'accepted-late.json',
    'cancelled-before-start.json',
    'cancelled.json',
    'continued-as-new.run-first.json',
    'continued-as-new.run-last.json',
    'escrow-refused.json',
    'failed.json',
    'happy.json',
    'node-lost-reassigned.json',
    'offer-unknown.json',
    'owed-why.json',
    'owed.json',
    'unreported-end.json',
  ]);
});

test.each(histories.map((h) => [path.basename(h.file), h] as const))('%s replays without nondeterminism', async (_name, { file, workflowId }) => {
  await Worker.runReplayHistory({ workflowBundle }, load(file), workflowId);
});

/**
 * Histories of earlier versions stay here for as long as jobs they started may still run: the current code must
 * replay them (changes go behind `patched()`). Each was kept with `scripts/record-histories.ts --keep-as=<label>`
 * before the scenarios were recorded again.
 */
describe('histories of released workflow versions', () => {
  if (previous.length === 0) {
    test('none before the first release', () => expect(previous).toEqual([]));
  } else {
    test.each(previous.map((h) => [h.label, h] as const))('%s replays without nondeterminism', async (_label, { file, workflowId }) => {
      await Worker.runReplayHistory({ workflowBundle }, load(file), workflowId);
    });
  }
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
