import { ActivityNotFoundError, type Client } from '@temporalio/client';
import { createJobWorkflowGateway } from '../../src/services/job-workflows';

/** The gateway's nodeAlive over a Temporal client that only records the activity heartbeats it is asked for. */
function gatewayWithClock(heartbeatTimeoutMs: number) {
  const sent: { workflowId: string; activityId: string; details: unknown }[] = [];
  let fail: Error | undefined;
  const client = {
    activity: {
      heartbeat: async (id: { workflowId: string; activityId: string }, details: unknown) => {
        if (fail) throw fail;
        sent.push({ ...id, details });
      },
    },
  } as unknown as Client;
  const gateway = createJobWorkflowGateway({
    client,
    taskQueue: 'q',
    options: { heartbeatTimeoutMs, maxAttempts: 3, maxRuntimeMs: 3600_000, requeueIntervalMs: 30_000, assignTimeoutMs: 5000, historyEventLimit: 10_000 },
    tokenDecimals: 9,
  });
  return { gateway, sent, failWith: (err: Error | undefined) => (fail = err) };
}

describe('nodeAlive: passing a node\'s signs of life to the watch over its job', () => {
  let now = 1_800_000_000_000;
  beforeEach(() => jest.spyOn(Date, 'now').mockImplementation(() => now));
  afterEach(() => jest.restoreAllMocks());

  it('counts the assignment as the first heartbeat: nothing is sent in the tenth of the timeout after it', async () => {
    const { gateway, sent } = gatewayWithClock(30_000);
    const assignedAt = new Date(now);
    for (const after of [0, 1000, 2999]) {
      now = assignedAt.getTime() + after;
      await gateway.nodeAlive('job-1', 1, { at: after }, assignedAt);
    }
    expect(sent).toEqual([]);
    now = assignedAt.getTime() + 3000;
    await gateway.nodeAlive('job-1', 1, { at: 3000 }, assignedAt);
    expect(sent).toEqual([{ workflowId: 'job-1', activityId: 'watch-1', details: { at: 3000 } }]);
  });

  it('then sends at most one heartbeat per watch per tenth of the timeout', async () => {
    const { gateway, sent } = gatewayWithClock(30_000);
    const assignedAt = new Date(now - 60_000);
    for (let t = 0; t <= 6000; t += 500) {
      now += 500;
      await gateway.nodeAlive('job-2', 3, { t }, assignedAt);
    }
    // 13 signs over 6.5 s, the first one sent, then one per 3 s
    expect(sent.map((s) => s.details)).toEqual([{ t: 0 }, { t: 3000 }, { t: 6000 }]);
    expect(new Set(sent.map((s) => s.activityId))).toEqual(new Set(['watch-3']));
  });

  it('sends right away when the assignment time is unknown or ahead of this clock', async () => {
    const { gateway, sent } = gatewayWithClock(30_000);
    await gateway.nodeAlive('job-3', 1, {});
    await gateway.nodeAlive('job-4', 1, {}, null);
    await gateway.nodeAlive('job-5', 1, {}, new Date(now + 5000));
    expect(sent.map((s) => s.workflowId)).toEqual(['job-3', 'job-4', 'job-5']);
  });

  it('tries again at the next sign of life when a heartbeat could not be sent', async () => {
    const { gateway, sent, failWith } = gatewayWithClock(30_000);
    failWith(new Error('Temporal unavailable'));
    await expect(gateway.nodeAlive('job-6', 1, { n: 1 })).rejects.toThrow('Temporal unavailable');
    failWith(undefined);
    now += 100;
    await gateway.nodeAlive('job-6', 1, { n: 2 });
    expect(sent.map((s) => s.details)).toEqual([{ n: 2 }]);
  });

  it('treats a watch that has ended as nothing to tell', async () => {
    const { gateway, failWith } = gatewayWithClock(30_000);
    failWith(new ActivityNotFoundError('not found'));
    await expect(gateway.nodeAlive('job-7', 1, {})).resolves.toBeUndefined();
  });
});
