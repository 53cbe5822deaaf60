import { randomUUID } from 'node:crypto';
import { isIPv6 } from 'node:net';
import type { Db } from '../db/client';
import { TooManyRequestsError } from '../domain/errors';
import * as jobsRepo from '../db/jobs-repo';
import * as nodesRepo from '../db/nodes-repo';
import type { JobWorkflowGateway } from './job-workflows';
import { keyedQuota } from './keyed-throttle';

export interface HeartbeatHubDeps {
  db: Db;
  workflows: JobWorkflowGateway;
  /** Keeps the node watches of reservations on beating nodes alive. */
  reservations?: { nodesAlive(nodeIds: ReadonlySet<string>, deadlineMs?: number): Promise<void> };
  flushMs: number;
  offlineAfterMs: number;
  metricsSampleMs: number;
  metricsRetentionMs: number;
  /** The token's decimals: a waiting job is woken for a node whose price its escrow covers. */
  tokenDecimals: number;
  /** Whether a caller may have one more node record made now (NEW_NODES_PER_MINUTE); absent = no limit. */
  mayCreateNode?: CallerGate;
  log: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void; error(obj: object, msg: string): void };
  now?: () => number;
}

/** Who a call came from: the signed-in user (auth on) and the address the call came from. */
export interface CallOrigin {
  owner?: string;
  address?: string;
}

/** Whether a caller may make one more call of a kind now (and counts it): see callerGate. */
export type CallerGate = (origin: CallOrigin) => boolean;

/**
 * A gate letting each caller (its user, else its address) make `perMinute` calls of a kind (new node records, job
 * submissions) a minute in this process; 0 = no gate.
 */
export function callerGate(perMinute: number, now: () => number = Date.now): CallerGate | undefined {
  if (perMinute <= 0) return undefined;
  const quota = keyedQuota(perMinute, 60_000);
  return (o) => quota.pass(o.owner ? `user:${o.owner}` : `address:${addressKey(o.address ?? '')}`, now());
}

/**
 * Who an address belongs to, for a quota: an IPv4 address (also one mapped into IPv6) as it is, an IPv6 address
 * by its /64, the block one subscriber is usually given (each of its 2^64 addresses would be a caller otherwise).
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  if (mapped) return mapped[1];
  if (!isIPv6(address)) return address;
  // Groups of 16 bits; a trailing dotted IPv4 part is two of them.
  const groups = (part: string | undefined) => (part ? part.split(':').flatMap((g) => (g.includes('.') ? ['0', '0'] : [g])) : []);
  const [head, tail] = address.split('%')[0].split('::');
  const h = groups(head);
  const t = groups(tail);
  const full = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return `${full.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':')}::/64`;
}

interface PendingBeat {
  at: Date;
  ramAvailable?: number;
  ramTotal?: number;
  /** Its liveness went out already, from memory, while Postgres refused the write (kept for the next flush). */
  livenessPassed?: boolean;
}

/** How long a stop order is repeated in heartbeat replies before it is dropped. */
const CANCEL_ORDER_TTL_MS = 10 * 60_000;
/** Housekeeping (offline sweep, pruning) runs at most this often. */
const HOUSEKEEPING_MS = 10_000;
/** Liveness passed to workflows: calls at once, and how long one may take before it is given up. */
const LIVENESS_CONCURRENCY = 64;
const LIVENESS_DEADLINE_MS = 5_000;
/** A node silent this long is forgotten by this process (its memory entries); a later beat looks it up again. */
const FORGET_AFTER_MS = 60 * 60_000;
/** A record made for an unknown id that never registers is deleted after this much silence… */
const UNREGISTERED_RETENTION_MS = 24 * 60 * 60_000;
/** …and a registered node silent this long is dormant (out of the node caches until it beats again)… */
const DORMANT_AFTER_MS = 24 * 60 * 60_000;
/** …by a pass this often, in statements of this many. */
const NODE_PRUNE_EVERY_MS = 60 * 60_000;
const NODE_PRUNE_BATCH = 1_000;

/**
 * Absorbs node heartbeats. A heartbeat is answered from memory at once; every `flushMs` the batch is
 * written to Postgres in one statement, sampled into node_metrics, and turned into liveness for the jobs
 * the beating nodes hold and the reservations holding them (a heartbeat on each one's watch activity, so a
 * silent node times the watch out).
 * No disk write and no Temporal call happens per heartbeat.
 *
 * What a server-side outage does not do: a batch Postgres refused stays pending for the next flush (a node's
 * newer beat wins), so no beat is lost, and its liveness still goes out, to the jobs its nodes held at the last
 * flush Postgres took (each beat's once); at most one periodic write runs at a time, and the Temporal calls run
 * beside the writes (passLiveness; each gives up after LIVENESS_DEADLINE_MS), so a slow Temporal cannot hold
 * back the Postgres writes; and the offline sweep
 * waits until the hub has written beats without a gap for a whole `offlineAfterMs` (after a start or a failed
 * flush, nodes that beat meanwhile would otherwise be swept offline before their beat is written).
 */
/**
 * A heartbeat relay marked within this long is up, and marks further apart mean it was down in between: a few
 * flushes (one may wait behind a slow one), at least 10 s.
 */
export const relayFreshMs = (flushMs: number) => Math.max(10_000, 4 * flushMs);

export function createHeartbeatHub(deps: HeartbeatHubDeps) {
  const { db, workflows, log } = deps;
  const now = deps.now ?? Date.now;
  let pending = new Map<string, PendingBeat>();
  /** The nodes this process has heard from within FORGET_AFTER_MS, and when it last did. */
  const known = new Map<string, number>();
  const lastSample = new Map<string, number>();
  let cancelOrders = new Map<string, string[]>();
  /** The jobs each beating node held at the last flush Postgres took: liveness goes on from it while it refuses. */
  const heldByNode = new Map<string, HeldJob[]>();
  let lastHousekeeping = 0;
  let lastNodePrune = 0;
  /** This process's heartbeat relay, marked alive at every flush (see nodesRepo.markRelay). */
  const relayId = `relay-${randomUUID()}`;
  /** Marks further apart than this mean the relay was down in between (a few missed flushes). */
  const relayGapMs = relayFreshMs(deps.flushMs);
  /** Since when every flush has written its beats (undefined after a failure, until the next success). */
  let writingSince: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  let flushing: Promise<void> = Promise.resolve();
  let flushesInFlight = 0;
  let pruning: Promise<void> | undefined;
  let pruningNodes: Promise<void> | undefined;
  /** The liveness pass running, and the work merged for the next one. */
  let liveness: Promise<void> | undefined;
  let nextLiveness: { held: Map<string, HeldJob & { at: Date }>; nodeIds: Set<string>; wake: Set<string> } | undefined;

  /**
   * Records a heartbeat. A node id the server does not know gets a minimal record instead of a failure:
   * shipping nodes never re-register by themselves.
   * @param origin who sent it, asked only when a record is made: not on the hot path.
   * @returns the jobs the node must stop.
   * @throws TooManyRequestsError when the id is unknown and its caller made its quota of new nodes this minute
   */
  async function beat(nodeId: string, status?: { ramAvailable?: number; ramTotal?: number }, origin?: () => CallOrigin): Promise<string[]> {
    const t = now();
    if (!known.has(nodeId)) await adopt(nodeId, origin);
    known.set(nodeId, t);
    pending.set(nodeId, { at: new Date(t), ramAvailable: status?.ramAvailable, ramTotal: status?.ramTotal });
    return cancelOrders.get(nodeId) ?? [];
  }

  /** A node id this process has not heard from lately: Postgres has its record, or one is made (within quota). */
  async function adopt(nodeId: string, origin?: () => CallOrigin): Promise<void> {
    if (await nodesRepo.nodeExists(db, nodeId)) return;
    const who = origin?.() ?? {};
    if (deps.mayCreateNode && !deps.mayCreateNode(who)) {
      throw new TooManyRequestsError(`node_id: ${nodeId} is not registered, and this caller had too many new nodes made in the last minute: register it, or beat again later`);
    }
    if (await nodesRepo.ensureNode(db, nodeId, who.owner)) {
      log.warn({ nodeId }, 'heartbeat from an unknown node: created a minimal record; it matches no job until it registers');
    }
  }

  /** Marks a node as known (it just registered). */
  function remember(nodeId: string): void {
    known.set(nodeId, now());
  }

  /** Drops what this process keeps of a node: its next beat looks it up in Postgres again. */
  function forget(nodeId: string): void {
    known.delete(nodeId);
    lastSample.delete(nodeId);
    heldByNode.delete(nodeId);
  }

  /** Forgets nodes silent for FORGET_AFTER_MS, so this process's memory follows the live nodes. */
  function forgetSilent(nowMs: number): void {
    for (const [nodeId, lastBeat] of known) if (nowMs - lastBeat >= FORGET_AFTER_MS) forget(nodeId);
  }

  /**
   * Nodes whose beats brought them back online: their refusals are forgotten (the jobs they refused want them
   * again). @returns the waiting jobs to wake for them. Never fails the flush, whose beats are written: a miss
   * only leaves a job to its next re-check.
   */
  async function backOnline(back: string[]): Promise<string[]> {
    log.info({ count: back.length, nodes: back.slice(0, 20) }, 'nodes back online');
    await jobsRepo.forgetRefusals(db, back).catch((err) => log.warn({ err: String(err) }, 'could not forget refusals of nodes back online'));
    return jobsRepo.waitingJobsFor(db, back, deps.tokenDecimals).catch((err) => {
      log.warn({ err: String(err) }, 'could not find the waiting jobs of nodes back online');
      return [];
    });
  }

  async function flushOnce(): Promise<void> {
    const batch = pending;
    pending = new Map();
    const at = new Date(now());
    if (batch.size > 0) {
      const beats = [...batch].map(([nodeId, b]) => ({ nodeId, at: b.at, ramAvailable: b.ramAvailable }));
      let held: HeldJob[];
      // Waiting jobs to wake for nodes back online: found as soon as the beats are written, so that a failure of a
      // later step (which keeps the batch for the next flush, where these nodes are online already) loses neither.
      let wake: string[] = [];
      try {
        const written = await nodesRepo.applyHeartbeats(db, beats, new Date(at.getTime() - deps.offlineAfterMs), at);
        // Deleted after their beat was taken (another process's prune): the next beat makes a record again.
        for (const nodeId of written.missing) {
          forget(nodeId);
          batch.delete(nodeId);
        }
        if (written.back.length > 0) wake = await backOnline(written.back);
        writingSince ??= at.getTime();
        await nodesRepo.insertSamples(db, sample(batch, at.getTime()));
        held = await jobsRepo.activeJobsOnNodes(db, [...batch.keys()]);
      } catch (err) {
        // The nodes are alive all the same: their jobs' watches hear it from what they held at the last flush,
        // or a Postgres outage longer than the heartbeat timeout would count every running job's node lost.
        // Only for nodes whose holdings are known (a node first seen, or first holding a job, since that flush is
        // passed on once Postgres takes its beat). Reservations' watches need Postgres to be found: not now.
        const mapped = [...batch].filter(([nodeId, b]) => !b.livenessPassed && heldByNode.has(nodeId)).map(([nodeId]) => nodeId);
        passLiveness({ at, held: mapped.flatMap((id) => heldByNode.get(id)!), nodeIds: new Set(), wake: new Set() });
        // Kept for the next flush; a beat that came in meanwhile is newer and stays.
        const passed = new Set(mapped);
        if (wake.length > 0) passLiveness({ at, held: [], nodeIds: new Set(), wake: new Set(wake) });
        for (const [nodeId, b] of batch) {
          if (!pending.has(nodeId)) pending.set(nodeId, { ...b, livenessPassed: b.livenessPassed || passed.has(nodeId) });
        }
        writingSince = undefined;
        throw err;
      }
      // Every beating node's holdings, none included (bounded by the nodes, like `known`).
      for (const nodeId of batch.keys()) heldByNode.set(nodeId, []);
      for (const j of held) heldByNode.get(j.nodeId)?.push(j);
      const passed = (nodeId: string) => batch.get(nodeId)?.livenessPassed === true;
      passLiveness({ at, held: held.filter((j) => !passed(j.nodeId)), nodeIds: new Set(batch.keys()), wake: new Set(wake) });
    } else {
      writingSince ??= at.getTime();
    }
    // Alive: this flush wrote its beats (a flush whose write failed threw above, and marks nothing).
    await nodesRepo.markRelay(db, relayId, relayGapMs);
    cancelOrders = await nodesRepo.pendingCancels(db);
    if (at.getTime() - lastHousekeeping >= HOUSEKEEPING_MS) {
      lastHousekeeping = at.getTime();
      if (writingSince !== undefined && at.getTime() - writingSince >= deps.offlineAfterMs) {
        const offline = await nodesRepo.markStaleNodesOffline(db, new Date(at.getTime() - deps.offlineAfterMs));
        if (offline.length > 0) log.info({ nodes: offline }, 'nodes offline: no heartbeat');
      }
      await nodesRepo.pruneCancels(db, new Date(at.getTime() - CANCEL_ORDER_TTL_MS));
      await nodesRepo.pruneRelays(db, new Date(at.getTime() - 86_400_000));
      const freed = await jobsRepo.dropClaimsOfEndedJobs(db);
      if (freed.length > 0) {
        log.warn({ nodes: freed }, 'dropped capacity claims of ended jobs');
        const wake = await jobsRepo.waitingJobsFor(db, freed, deps.tokenDecimals);
        // Beside the writes, like all liveness: a slow Temporal must not hold back the next flush.
        if (wake.length > 0) passLiveness({ at, held: [], nodeIds: new Set(), wake: new Set(wake) });
      }
      pruning ??= pruneMetrics(new Date(at.getTime() - deps.metricsRetentionMs)).finally(() => (pruning = undefined));
      forgetSilent(at.getTime());
      if (at.getTime() - lastNodePrune >= NODE_PRUNE_EVERY_MS) {
        lastNodePrune = at.getTime();
        pruningNodes ??= pruneNodes(at.getTime()).finally(() => (pruningNodes = undefined));
      }
    }
  }

  /**
   * Passes liveness to Temporal (job watches, reservation watches, wake-ups) beside the writes: a slow Temporal
   * delays only this. One pass runs at a time; what comes in meanwhile is merged into the next (a job's newest
   * sign of life wins), so the work waiting is bounded by the jobs and nodes there are.
   */
  function passLiveness(work: LivenessWork): void {
    if (nextLiveness) {
      for (const j of work.held) nextLiveness.held.set(j.id, { ...j, at: work.at });
      for (const id of work.nodeIds) nextLiveness.nodeIds.add(id);
      for (const id of work.wake) nextLiveness.wake.add(id);
    } else {
      nextLiveness = { held: new Map(work.held.map((j) => [j.id, { ...j, at: work.at }])), nodeIds: work.nodeIds, wake: work.wake };
    }
    liveness ??= drainLiveness().finally(() => (liveness = undefined));
  }

  async function drainLiveness(): Promise<void> {
    while (nextLiveness) {
      const { held, nodeIds, wake } = nextLiveness;
      nextLiveness = undefined;
      await inBatches([...held.values()], LIVENESS_CONCURRENCY, (j) =>
        workflows
          .nodeAlive(j.id, j.attempts, { source: 'heartbeat', nodeId: j.nodeId, at: j.at.toISOString() }, j.assignedAt, LIVENESS_DEADLINE_MS)
          .catch((err) => log.warn({ jobId: j.id, err: String(err) }, 'could not pass node liveness to the job')),
      );
      await deps.reservations?.nodesAlive(nodeIds, LIVENESS_DEADLINE_MS).catch((err) => log.warn({ err: String(err) }, 'could not pass node liveness to reservations'));
      if (wake.size > 0) await workflows.nodesChanged([...wake]).catch((err) => log.warn({ err: String(err) }, 'could not wake waiting jobs'));
    }
  }

  /** Deletes expired samples in small statements, beside the flushes (never holding one up). */
  async function pruneMetrics(before: Date): Promise<void> {
    try {
      while ((await nodesRepo.pruneMetrics(db, before, PRUNE_BATCH)) === PRUNE_BATCH && timer) {
        // More to delete: go on, one bounded statement at a time, while the hub runs.
      }
    } catch (err) {
      log.warn({ err: String(err) }, 'could not prune node metrics');
    }
  }

  /**
   * Beside the flushes: makes registered nodes silent for DORMANT_AFTER_MS dormant, and deletes the records of
   * unknown ids that never registered, silent for UNREGISTERED_RETENTION_MS.
   */
  async function pruneNodes(nowMs: number): Promise<void> {
    const passes = [
      { what: 'nodes silent for a day are dormant: out of matching until they beat again', run: () => nodesRepo.markNodesDormant(db, new Date(nowMs - DORMANT_AFTER_MS), NODE_PRUNE_BATCH, new Date(nowMs)) },
      { what: 'deleted the records of unknown node ids that never registered, silent for a day', run: () => nodesRepo.pruneUnregisteredNodes(db, new Date(nowMs - UNREGISTERED_RETENTION_MS), NODE_PRUNE_BATCH) },
    ];
    try {
      for (const pass of passes) {
        for (;;) {
          const ids = await pass.run();
          for (const nodeId of ids) forget(nodeId);
          if (ids.length > 0) log.info({ count: ids.length }, pass.what);
          if (ids.length < NODE_PRUNE_BATCH || !timer) break;
        }
      }
    } catch (err) {
      log.warn({ err: String(err) }, 'could not make silent nodes dormant or delete unregistered ones');
    }
  }

  /**
   * One node_metrics sample per node per sample period. Memory in use is 1 − available / total, with the total
   * the beat carries or, when it carries none (the shipping node sends only ram_available), the registered one.
   */
  function sample(batch: Map<string, PendingBeat>, nowMs: number): nodesRepo.MetricSample[] {
    const rows: nodesRepo.MetricSample[] = [];
    for (const [nodeId, b] of batch) {
      if (nowMs - (lastSample.get(nodeId) ?? 0) < deps.metricsSampleMs) continue;
      lastSample.set(nodeId, nowMs);
      rows.push({ nodeId, at: b.at, ramAvailable: b.ramAvailable ?? null, ramTotal: b.ramTotal || null });
    }
    return rows;
  }

  /** Writes what is pending now (serialised with the periodic flush); the liveness it passes on may follow. */
  function write(): Promise<void> {
    flushesInFlight += 1;
    flushing = flushing
      .then(flushOnce)
      .catch((err) => log.error({ err: String(err) }, 'heartbeat flush failed'))
      .finally(() => (flushesInFlight -= 1));
    return flushing;
  }

  /** Writes what is pending now and passes its liveness on, both done when this resolves. */
  async function flush(): Promise<void> {
    await write();
    await liveness;
  }

  function start(): void {
    // A tick while a write still runs is skipped: its beats wait in `pending` for the next one.
    timer ??= setInterval(() => void (flushesInFlight === 0 && write()), deps.flushMs);
    timer.unref();
  }

  async function stop(): Promise<void> {
    if (timer) clearInterval(timer);
    timer = undefined;
    await flush();
    await pruning;
    await pruningNodes;
  }

  return { beat, remember, flush, start, stop };
}

type HeldJob = Awaited<ReturnType<typeof jobsRepo.activeJobsOnNodes>>[number];

/** Liveness one write passes on: the jobs held by the nodes that beat, those nodes, the waiting jobs to wake. */
interface LivenessWork {
  at: Date;
  held: HeldJob[];
  nodeIds: Set<string>;
  wake: Set<string>;
}

/** Samples deleted per statement when pruning. */
const PRUNE_BATCH = 10_000;

/** Runs `task` over `items`, at most `limit` at a time. */
async function inBatches<T>(items: T[], limit: number, task: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await task(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

export type HeartbeatHub = ReturnType<typeof createHeartbeatHub>;
