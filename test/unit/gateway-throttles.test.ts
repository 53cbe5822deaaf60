import { ActivityNotFoundError, WorkflowNotFoundError, type Client } from '@temporalio/client';
import { ConflictError } from '../../src/domain/errors';
import { createJobWorkflowGateway } from '../../src/services/job-workflows';
import { addressKey, callerGate } from '../../src/services/heartbeat-hub';
import { keyedQuota } from '../../src/services/keyed-throttle';

/**
 * The gateway over a Temporal client that only records the activity heartbeats and workflow signals it is
 * asked for (or fails them with `failWith`).
 */
function gatewayWithClock(heartbeatTimeoutMs: number, progressSignalIntervalMs?: number) {
  const sent: { workflowId: string; activityId: string; details: unknown }[] = [];
  const signals: { workflowId: string; name: string; arg: unknown }[] = [];
  let fail: Error | undefined;
  const client = {
    connection: { withAbortSignal: (_signal: AbortSignal, run: () => Promise<unknown>) => run() },
    activity: {
      heartbeat: async (id: { workflowId: string; activityId: string }, details: unknown) => {
        if (fail) throw fail;
        sent.push({ ...id, details });
      },
    },
    workflow: {
      getHandle: (workflowId: string) => ({
        signal: async (def: { name: string }, arg: unknown) => {
          if (fail) throw fail;
          signals.push({ workflowId, name: def.name, arg });
        },
      }),
    },
  } as unknown as Client;
  const gateway = createJobWorkflowGateway({
    client,
    taskQueue: 'q',
    options: { heartbeatTimeoutMs, maxAttempts: 3, maxRuntimeMs: 3600_000, requeueIntervalMs: 30_000, assignTimeoutMs: 5000, historyEventLimit: 10_000 },
    tokenDecimals: 9,
    progressSignalIntervalMs,
  });
  return { gateway, sent, signals, failWith: (err: Error | undefined) => (fail = err) };
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

describe('progress: passing a node\'s progress reports to its job\'s workflow', () => {
  let now = 1_800_000_000_000;
  beforeEach(() => jest.spyOn(Date, 'now').mockImplementation(() => now));
  afterEach(() => jest.restoreAllMocks());
  const report = (progress: number) => ({ nodeId: 'node-1', progress, epoch: Math.round(progress * 10) });

  it('passes the first report of an attempt at once, then at most one per interval', async () => {
    const { gateway, signals } = gatewayWithClock(30_000, 10_000);
    const told: boolean[] = [];
    for (let t = 0; t <= 21_000; t += 1000) {
      told.push(await gateway.progress('job-1', 1, report(t / 100_000)));
      now += 1000;
    }
    // 22 reports over 21 s: the first, then one each 10 s
    expect(signals.map((s) => s.arg)).toEqual([report(0), report(0.1), report(0.2)]);
    expect(told.filter(Boolean)).toHaveLength(3);
    expect(new Set(signals.map((s) => s.name))).toEqual(new Set(['progress']));
  });

  it('passes the first report of a new attempt at once (the new node started)', async () => {
    const { gateway, signals } = gatewayWithClock(30_000, 10_000);
    await gateway.progress('job-2', 1, report(0.5));
    now += 100;
    await gateway.progress('job-2', 2, report(0.1));
    await gateway.progress('job-3', 1, report(0.2));
    expect(signals.map((s) => [s.workflowId, s.arg])).toEqual([['job-2', report(0.5)], ['job-2', report(0.1)], ['job-3', report(0.2)]]);
  });

  it('passes every report with an interval of 0', async () => {
    const { gateway, signals } = gatewayWithClock(30_000, 0);
    for (const p of [0.1, 0.2, 0.3]) await gateway.progress('job-4', 1, report(p));
    expect(signals).toHaveLength(3);
  });

  it('passes the next report when one could not be delivered, and says why it could not', async () => {
    const { gateway, signals, failWith } = gatewayWithClock(30_000, 10_000);
    failWith(new WorkflowNotFoundError('gone', 'job-5', undefined));
    await expect(gateway.progress('job-5', 1, report(0.1))).rejects.toThrow(ConflictError);
    failWith(undefined);
    now += 100;
    await expect(gateway.progress('job-5', 1, report(0.2))).resolves.toBe(true);
    expect(signals.map((s) => s.arg)).toEqual([report(0.2)]);
  });
});

describe('keyedQuota: so many calls per key per window', () => {
  test('lets `limit` calls of a key through per window, keys apart, and forgets windows that ended', () => {
    const quota = keyedQuota(3, 1000);
    expect([0, 10, 20, 30].map((t) => quota.pass('a', t))).toEqual([true, true, true, false]);
    expect(quota.pass('b', 40)).toBe(true);
    expect(quota.pass('a', 999)).toBe(false);
    expect([1000, 1001, 1002, 1003].map((t) => quota.pass('a', t))).toEqual([true, true, true, false]);
  });
});

describe('new node records: one quota per caller', () => {
  it('counts an IPv4 caller by its address, also mapped into IPv6, and an IPv6 caller by its /64', () => {
    expect(addressKey('203.0.113.7')).toBe('203.0.113.7');
    expect(addressKey('::ffff:203.0.113.7')).toBe('203.0.113.7');
    expect(addressKey('2001:db8:1:2::1')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:0db8:0001:0002:ffff:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('a::b:c:d:e:f:1')).toBe('a:0:b:c::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
  });

  it('lets a user make its quota wherever it calls from, and each address its own', () => {
    let now = 0;
    const gate = callerGate(2, () => now)!;
    expect([gate({ address: '2001:db8:1:2::1' }), gate({ address: '2001:db8:1:2::ffff' }), gate({ address: '2001:db8:1:2::3' })]).toEqual([true, true, false]);
    expect(gate({ address: '2001:db8:1:3::1' })).toBe(true);
    expect([gate({ owner: 'u', address: '2001:db8:1:2::1' }), gate({ owner: 'u', address: '198.51.100.1' }), gate({ owner: 'u' })]).toEqual([true, true, false]);
    now += 60_000;
    expect(gate({ address: '2001:db8:1:2::1' })).toBe(true);
    expect(callerGate(0)).toBeUndefined();
  });
});

describe('cancel: answering within the Engine\'s 10 s', () => {
  /** A gateway whose cancel update is accepted at once and finishes after `settleMs` (never when undefined). */
  function cancelling(settleMs: number | undefined, escrow: string) {
    const client = {
      connection: { withAbortSignal: (_signal: AbortSignal, run: () => Promise<unknown>) => run() },
      workflow: {
        getHandle: () => ({
          startUpdate: async () => ({
            result: () => new Promise((resolve) => settleMs !== undefined && setTimeout(() => resolve({ refundIssued: true, txRef: 'sig' }), settleMs)),
          }),
          query: async () => ({ escrow }),
        }),
      },
    } as unknown as Client;
    return createJobWorkflowGateway({
      client,
      taskQueue: 'q',
      options: { heartbeatTimeoutMs: 30_000, maxAttempts: 3, maxRuntimeMs: 3600_000, requeueIntervalMs: 30_000, assignTimeoutMs: 5000, historyEventLimit: 10_000 },
      tokenDecimals: 9,
      cancelAnswerMs: 50,
    });
  }

  it('answers with the refund when it is made in time', async () => {
    expect(await cancelling(5, 'held').cancel('j', 'r')).toEqual({ refundIssued: true, txRef: 'sig' });
  });

  it('answers once the cancel is accepted when the refund takes longer: issued if the escrow is held', async () => {
    expect(await cancelling(undefined, 'held').cancel('j', 'r')).toEqual({ refundIssued: true, txRef: '' });
    expect(await cancelling(undefined, 'none').cancel('j', 'r')).toEqual({ refundIssued: false, txRef: '' });
  });
});
