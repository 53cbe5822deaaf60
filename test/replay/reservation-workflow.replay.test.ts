/**
 * Replays recorded histories of the reservation workflow (test/replay/reservation-histories, written by
 * scripts/record-reservation-histories.ts) against the current workflow code. A change to its command sequence
 * (money activities, the watch, timers, markers of the store's local activities, search-attribute upserts) breaks
 * replay of reservations already running in production; such a change must be guarded with `patched()` and
 * these histories must keep replaying.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DeterminismViolationError } from '@temporalio/workflow';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { recordedReservationHistories } from './reservation-histories';

interface JsonEvent {
  eventType: string;
  eventId?: string;
  activityTaskScheduledEventAttributes?: { activityType?: { name?: string } };
  [key: string]: unknown;
}

let workflowBundle: WorkflowBundleWithSourceMap;

beforeAll(async () => {
  // The tampered histories below make the SDK log nondeterminism warnings on purpose; errors still show.
  try {
    Runtime.install({
      logger: new DefaultLogger('ERROR'),
      telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, forward: {} } },
    });
  } catch {
    // Another replay test in this process installed it first, with the same settings.
  }
  workflowBundle = await bundleWorkflowCode({
    workflowsPath: require.resolve('../../src/workflows'),
    logger: new DefaultLogger('WARN'),
  });
});

const load = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8')) as { events: JsonEvent[] };
const histories = recordedReservationHistories();

test('the recorded scenarios are all there', () => {
  expect(histories.map((h) => path.basename(h.file))).toEqual([
    'cancelled.json',
    'expired.json',
    'extend-retried.json',
    'extended.json',
    'lost-then-released.json',
    'node-lost.json',
    'owed-extended.json',
    'owed.json',
    'relay-lapse.json',
    'released.json',
    'withdrawn.json',
  ]);
});

test.each(histories.map((h) => [path.basename(h.file), h] as const))('%s replays without nondeterminism', async (_name, { file, workflowId }) => {
  await Worker.runReplayHistory({ workflowBundle }, load(file), workflowId);
});

test('all of them replay in one batch, as a deploy check would run them', async () => {
  const results = [];
  for await (const result of Worker.runReplayHistories({ workflowBundle }, histories.map((h) => ({ workflowId: h.workflowId, history: load(h.file) })))) {
    results.push(result);
  }
  expect(results.map((r) => [r.workflowId, r.error])).toEqual(histories.map((h) => [h.workflowId, undefined]));
});

describe('replay catches a changed command sequence', () => {
  const expired = histories.find((h) => h.file.endsWith('expired.json'))!;

  test('an activity the workflow no longer schedules there (the settlement replaced by an escrow)', async () => {
    const history = load(expired.file);
    const settle = history.events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'settleReservationPot');
    expect(settle).toBeDefined();
    settle!.activityTaskScheduledEventAttributes!.activityType!.name = 'escrowReservationPot';
    await expect(Worker.runReplayHistory({ workflowBundle }, history, expired.workflowId)).rejects.toBeInstanceOf(DeterminismViolationError);
  });

  test('a command the recorded run did not make (an added search-attribute upsert)', async () => {
    const history = load(expired.file);
    const index = history.events.findIndex((e) => e.eventType === 'EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES');
    expect(index).toBeGreaterThan(0);
    history.events.splice(index, 1);
    history.events.forEach((e, i) => (e.eventId = String(i + 1)));
    await expect(Worker.runReplayHistory({ workflowBundle }, history, expired.workflowId)).rejects.toBeInstanceOf(DeterminismViolationError);
  });
});
