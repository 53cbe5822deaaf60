import { toNodeInfo } from '../../src/api/grpc/discovery-handlers';
import { nodeJson } from '../../src/api/rest/app';
import type { NodeRow } from '../../src/db/nodes-repo';
import { nodeStats } from '../../src/domain/node-stats';
import type { DiscoveredNode } from '../../src/services/discovery-service';

const HOUR = 3_600_000;
const NOW = new Date('2026-11-27T12:00:00Z');
const ago = (ms: number) => new Date(NOW.getTime() - ms);

function row(over: Partial<NodeRow> = {}): NodeRow {
  return {
    id: 'n1',
    name: 'node one',
    cpuCores: 8,
    ramTotal: 32 * 2 ** 30,
    ramAvailable: 16 * 2 ** 30,
    devices: [],
    deviceTypes: [],
    maxDeviceMemory: 0,
    ipAddress: '10.0.0.1',
    port: 50052,
    region: 'eu-west',
    walletAddress: 'W',
    walletFromAccount: false,
    owner: null,
    reputation: 0.5,
    computeScore: 100,
    pricePerHour: 0.41,
    pricing: {},
    capacity: 1,
    bannedUntil: null,
    reservedBy: null,
    status: 'online',
    profile: {},
    totalJobsCompleted: 3,
    totalJobsFailed: 1,
    computeMs: 0,
    onlineMs: 0,
    uptimeSince: ago(10 * HOUR),
    registeredAt: ago(10 * HOUR),
    updatedAt: ago(1000),
    lastHeartbeat: ago(5000),
    ...over,
  };
}

describe('nodeStats', () => {
  it('counts whole compute hours, rounded down', () => {
    const at = { now: NOW, online: true };
    expect(nodeStats(row({ computeMs: 0 }), at).totalComputeHours).toBe(0);
    expect(nodeStats(row({ computeMs: HOUR - 1 }), at).totalComputeHours).toBe(0);
    expect(nodeStats(row({ computeMs: 2.5 * HOUR }), at).totalComputeHours).toBe(2);
    expect(nodeStats(row({ computeMs: 1000 * HOUR }), at).totalComputeHours).toBe(1000);
  });

  it('is the share of the time since the record began that the node was online, the open gap counting while online', () => {
    // 10 h record; 7 h of heartbeat gaps written, last heartbeat 1 h ago
    const node = row({ onlineMs: 7 * HOUR, lastHeartbeat: ago(HOUR) });
    expect(nodeStats(node, { now: NOW, online: true }).uptimePercentage).toBeCloseTo(80, 9);
    expect(nodeStats(node, { now: NOW, online: false }).uptimePercentage).toBeCloseTo(70, 9);
  });

  it('stays within 0..100, also for a node registered this instant or heard from before its record began', () => {
    expect(nodeStats(row({ uptimeSince: NOW, lastHeartbeat: NOW }), { now: NOW, online: true }).uptimePercentage).toBe(100);
    expect(nodeStats(row({ uptimeSince: NOW, lastHeartbeat: NOW }), { now: NOW, online: false }).uptimePercentage).toBe(0);
    // a heartbeat older than the record (nodes that predate migration 0004): only the record's span counts
    expect(nodeStats(row({ uptimeSince: ago(HOUR), lastHeartbeat: ago(5 * HOUR) }), { now: NOW, online: true }).uptimePercentage).toBe(100);
    expect(nodeStats(row({ onlineMs: 50 * HOUR }), { now: NOW, online: true }).uptimePercentage).toBe(100);
    expect(nodeStats(row({ onlineMs: -5 }), { now: NOW, online: false }).uptimePercentage).toBe(0);
  });
});

describe('NodeInfo and REST carry the same track record', () => {
  const node = row({ computeMs: 26 * HOUR + 59 * 60_000, onlineMs: 6 * HOUR, lastHeartbeat: ago(2 * HOUR) });

  it('maps total_compute_hours as an int64 string and uptime_percentage as 0..100', () => {
    const discovered: DiscoveredNode = { ...node, online: true, ...nodeStats(node, { now: NOW, online: true }) };
    const info = toNodeInfo(discovered);
    expect(info.total_compute_hours).toBe('26');
    expect(info.uptime_percentage).toBeCloseTo(80, 9);
    expect(info.total_jobs_completed).toBe('3');
  });

  it('GET /api/nodes/:id shows the values NodeInfo shows, liveness judged the same way', () => {
    const online = nodeJson(node, 0, 3 * HOUR, NOW);
    expect(online).toMatchObject({ online: true, totalComputeHours: 26, computeSeconds: 26 * 3600 + 59 * 60 });
    expect(online.uptimePercentage).toBeCloseTo(80, 9);
    // past the offline timeout: the open gap is not online time
    const silent = nodeJson(node, 0, HOUR, NOW);
    expect(silent.online).toBe(false);
    expect(silent.uptimePercentage).toBeCloseTo(60, 9);
    const info = toNodeInfo({ ...node, online: false, ...nodeStats(node, { now: NOW, online: false }) });
    expect([Number(info.total_compute_hours), info.uptime_percentage]).toEqual([silent.totalComputeHours, silent.uptimePercentage]);
  });
});
