import { randomUUID } from 'node:crypto';
import type { Db } from '../db/client';
import * as jobsRepo from '../db/jobs-repo';
import * as nodesRepo from '../db/nodes-repo';
import * as reservationsRepo from '../db/reservations-repo';
import { ConflictError, ForbiddenError, NotFoundError, requireOwner, TooManyRequestsError, UnavailableError } from '../domain/errors';
import { isId } from '../domain/ids';
import { isTerminal } from '../domain/job';
import { isHolding } from '../domain/reservation';
import type { CallerGate, HeartbeatHub } from './heartbeat-hub';
import { keyedThrottle } from './keyed-throttle';
import { walletOrNone, type WalletLinks } from './wallet-links';
import type { JobWorkflowGateway } from './job-workflows';


/** How long passing a node's report on as liveness may take before it is given up (the report itself is kept). */
const NODE_ALIVE_LIMIT_MS = 5_000;
/**
 * A registration that keeps the node's wallet tells what the node is owed at most this often (per process): the
 * wallet may have opened its token account since. Each tell is a settlement attempt per owing job, so a node
 * registering in a loop must not drive them.
 */
const OWED_RETELL_MS = 10 * 60_000;
/**
 * A node registering again and again (a loop, a script flipping its wallet) wakes the waiting jobs, and tells what
 * it is owed of a changed wallet, at most this often: each costs a query and signals to up to 128 workflows.
 */
const REGISTRATION_FANOUT_MS = 10_000;
/** An acceptance Temporal did not take is tried again this often, this many times (about two minutes). */
const ACCEPT_RETRY_MS = 5_000;
const ACCEPT_RETRY_TRIES = 24;
export interface NodeServiceDeps {
  db: Db;
  workflows: JobWorkflowGateway;
  heartbeats: HeartbeatHub;
  /** Reservations owing a node its share get told when it registers a wallet. */
  reservations?: { walletRegistered(nodeId: string): Promise<void> };
  /** A node is alive while its last heartbeat is younger than this. */
  offlineAfterMs: number;
  /** The token's decimals: a waiting job is woken for a node whose price its escrow covers. */
  tokenDecimals: number;
  /** Whether a caller may have one more node record made now (NEW_NODES_PER_MINUTE); absent = no limit. */
  mayCreateNode?: CallerGate;
  /** Wallets users linked: a node registered without a wallet, by a token naming none, is paid to the first. */
  walletLinks?: WalletLinks;
  log: { warn(obj: object, msg: string): void };
}

export interface ProgressReport {
  nodeId: string;
  jobId: string;
  progress?: number;
  epoch?: number;
  metrics?: Record<string, number>;
}

/** Use-cases of nodes: registration, liveness, and the reports they make about their jobs. */
export function createNodeService(deps: NodeServiceDeps) {
  const { db, workflows, heartbeats } = deps;
  /** A registration that keeps its node's wallet tells what the node is owed at most every OWED_RETELL_MS. */
  const owedRetellThrottle = keyedThrottle(OWED_RETELL_MS);
  const wakeThrottle = keyedThrottle(REGISTRATION_FANOUT_MS);
  const walletChangeThrottle = keyedThrottle(REGISTRATION_FANOUT_MS);

  /**
   * Registers a node, or refreshes the one it already is. The same node gets the same id every time: a
   * registration naming an id is that node (or a new one keeping the id, when it is free, so its P2P service
   * and the server agree from the first run); one naming none is the node registered with its wallet, else at
   * its endpoint.
   * A node registered without a wallet (the shipping node sends none) is paid to the signed-in user's wallet
   * (`accountWallet`, its token's claim, else the first wallet the user linked) until it names one: its earnings
   * would otherwise stay owed.
   * @param from who registers: the user (auth on), the address the call came from (with the user, whose quota of
   * new nodes a new one counts against), the user's wallet.
   * @throws TooManyRequestsError for a new node beyond its caller's quota
   */
  async function register(
    claimedId: string,
    reg: nodesRepo.NodeRegistration,
    from: { caller?: string; address?: string; accountWallet?: string } = {},
  ): Promise<{ nodeId: string; created: boolean }> {
    const { caller, address } = from;
    const existing = await nodesRepo.findRegisteredNode(db, {
      // An id that cannot be one (a third-party client's) names none: the node is then known by wallet or endpoint.
      nodeId: isId(claimedId) ? claimedId : '',
      walletAddress: reg.walletAddress,
      ipAddress: reg.ipAddress,
      port: reg.port,
      owner: caller,
    });
    const before = existing ? await nodesRepo.getNode(db, existing) : undefined;
    if (existing) refuseTakeover(existing, before, reg, caller);
    else if (deps.mayCreateNode && !deps.mayCreateNode({ owner: caller, address })) {
      throw new TooManyRequestsError('too many new nodes registered by this caller in the last minute: register again in a minute');
    }
    // A new node keeps the id it brings, unless another user's node has it (auth on): then it gets a fresh one,
    // which the shipping node stores and sends from then on.
    const claimable = isId(claimedId) && (existing !== undefined || !(await nodesRepo.getNode(db, claimedId)));
    const nodeId = existing ?? (claimable ? claimedId : randomUUID());
    const accountWallet = caller && !reg.walletAddress ? await accountWalletOf(caller, from.accountWallet) : '';
    const row = await nodesRepo.upsertNode(db, nodeId, reg, caller, accountWallet);
    heartbeats.remember(nodeId);
    // A new wallet pays what the node is owed; beside the answer (the node gives RegisterNode 10 s). So may the
    // same one registered again: it may not have had a token account for the mint before.
    const walletChanged = row.walletAddress !== before?.walletAddress;
    if (row.walletAddress && (walletChanged ? walletChangeThrottle.pass(nodeId, Date.now()) : owedRetellThrottle.pass(nodeId, Date.now()))) payOwedSoon(nodeId);
    // Waiting jobs may fit this node now, those it refused before included.
    if (!wakeThrottle.pass(nodeId, Date.now())) return { nodeId, created: !existing };
    void jobsRepo
      .forgetRefusals(db, [nodeId])
      .then(() => jobsRepo.waitingJobsFor(db, [nodeId], deps.tokenDecimals))
      .then((ids) => workflows.nodesChanged(ids))
      .catch((err) => deps.log.warn({ err: String(err) }, 'could not wake queued jobs'));
    return { nodeId, created: !existing };
  }

  /** The user's account wallet: the wallet its token names (`claim`, when it is an address), else its first linked. */
  async function accountWalletOf(user: string, claim: string | undefined): Promise<string> {
    return walletOrNone(claim) || ((await deps.walletLinks?.firstLinked(user)) ?? '');
  }

  /**
   * Links a wallet to the user (WalletLinks.link); the user's nodes that have no wallet are then paid to the
   * user's account wallet, what they are owed included.
   * @param claim the wallet the user's token names ('' when none)
   */
  async function linkWallet(user: string, claim: string, wallet: string, signature: string, expiresAt: string): Promise<void> {
    const links = linksOrRefuse();
    await links.link(user, wallet, signature, expiresAt);
    // Also when it was linked already: a link whose move of the nodes failed (a deadlock, Postgres away) is
    // finished by asking again (the move changes only the nodes still to move).
    await accountWalletChanged(user, '', await accountWalletOf(user, claim));
  }

  /**
   * Unlinks a wallet from the user; the nodes paid to it from the account are paid to the user's account wallet
   * now (or owed until there is one), unless the token names it: those nodes follow the claim.
   * @returns whether it was linked
   */
  async function unlinkWallet(user: string, claim: string, wallet: string): Promise<boolean> {
    const unlinked = await linksOrRefuse().unlink(user, wallet);
    // Also when it was unlinked already: asking again finishes a move that failed.
    if (wallet !== walletOrNone(claim)) await accountWalletChanged(user, wallet, await accountWalletOf(user, claim));
    return unlinked;
  }

  function linksOrRefuse(): WalletLinks {
    if (!deps.walletLinks) throw new ConflictError('wallet links are not kept by this server');
    return deps.walletLinks;
  }

  /**
   * The user's account wallet changed from `from` to `to`: the user's nodes paid to `from` from the account, and
   * those with no wallet at all, are paid to `to` from now on ('' = owed until there is one), what they are owed
   * included.
   * @returns the nodes whose wallet changed
   */
  async function accountWalletChanged(owner: string, from: string, to: string): Promise<string[]> {
    if (from === to) return [];
    const changed = await nodesRepo.moveAccountWallet(db, owner, from, to);
    // One node after the other, beside the answer: a user's thousands of nodes at once would take every
    // connection of the pool (the heartbeat writes waiting behind them).
    if (to && changed.length > 0) {
      void (async () => {
        for (const nodeId of changed) await payOwed(nodeId);
      })();
    }
    return changed;
  }

  /** Tells the jobs and reservations owing the node that it has a wallet to be paid to, beside the caller's answer. */
  function payOwedSoon(nodeId: string): void {
    void payOwed(nodeId);
  }

  async function payOwed(nodeId: string): Promise<void> {
    try {
      const owed = await jobsRepo.jobsOwingNode(db, nodeId);
      if (owed.length > 0) await workflows.walletRegistered(owed);
      await deps.reservations?.walletRegistered(nodeId);
    } catch (err) {
      deps.log.warn({ nodeId, err: String(err) }, 'could not tell what the node is owed of its new wallet');
    }
  }

  /**
   * Without auth a registration proves nothing, so it may not take over a node that is alive elsewhere: an
   * online node keeps its endpoint, and with it its wallet and its jobs, until it has been silent for the
   * offline timeout. With auth (AUTH_JWT_SECRET), only the user who registered the node may register it again.
   * @throws ConflictError, ForbiddenError
   */
  function refuseTakeover(nodeId: string, node: nodesRepo.NodeRow | undefined, reg: nodesRepo.NodeRegistration, caller: string | undefined): void {
    // With auth on, a node belongs to the user who registered it first: nobody else re-registers it (its
    // wallet, and with it the payments it is owed), online or not.
    requireOwner(node?.owner, caller, `node ${nodeId}`);
    if (!node || (node.ipAddress === reg.ipAddress && node.port === reg.port) || node.port === 0) return;
    // Its owner, proven by the token, may move it (a new LAN address) at once.
    if (caller !== undefined && node.owner && node.owner === caller) return;
    const alive = node.status === 'online' && Date.now() - node.lastHeartbeat.getTime() < deps.offlineAfterMs;
    if (alive) {
      throw new ConflictError(`node ${nodeId} is online at ${node.ipAddress}:${node.port}; it cannot register from ${reg.ipAddress}:${reg.port}`);
    }
  }

  /**
   * Refuses a report about the node from a user who does not own it (auth on; see requireOwner).
   * @throws ForbiddenError
   */
  async function requireNodeOwner(nodeId: string, caller: string | undefined): Promise<void> {
    if (caller === undefined) return;
    requireOwner((await nodesRepo.getNode(db, nodeId))?.owner, caller, `node ${nodeId}`);
  }

  /**
   * The job as held by this node, for a report about it.
   * @throws NotFoundError (unknown job), ForbiddenError (another node holds it), ConflictError (finished).
   */
  async function heldJob(nodeId: string, jobId: string, read?: jobsRepo.JobRow | null): Promise<jobsRepo.JobRow> {
    const job = read === undefined ? await jobsRepo.getJob(db, jobId) : read;
    if (!job) throw new NotFoundError('job', jobId);
    if (isTerminal(job.status)) throw new ConflictError(`job ${jobId} has already finished (${job.status})`);
    if (job.assignedNodeId !== nodeId) throw new ForbiddenError(`node ${nodeId} does not hold job ${jobId}`);
    return job;
  }

  function alive(job: Pick<jobsRepo.JobRow, 'id' | 'attempts' | 'assignedAt'>, nodeId: string, source: string): Promise<void> {
    return workflows.nodeAlive(job.id, job.attempts, { source, nodeId, at: new Date().toISOString() }, job.assignedAt, NODE_ALIVE_LIMIT_MS);
  }

  /**
   * NotifyJobAccepted: the node started the job for its Engine. In the reservation flow the job id is the
   * reservation's (the Engine sends its jobs to the node it reserved): acknowledged while that node holds it.
   */
  async function accepted(nodeId: string, jobId: string): Promise<void> {
    const read = await jobsRepo.getJob(db, jobId);
    if (!read) {
      const reservation = await reservationsRepo.getReservation(db, jobId);
      if (reservation) {
        if (reservation.nodeId !== nodeId) throw new ForbiddenError(`node ${nodeId} does not hold reservation ${jobId}`);
        if (!isHolding(reservation.status)) throw new ConflictError(`reservation ${jobId} has ended (${reservation.status})`);
        return;
      }
    }
    const job = await heldJob(nodeId, jobId, read ?? null);
    // Running already: accepted before (the update would only cost the job's history; it comes without a token).
    if (job.status !== 'assigned') return;
    // A sign of life only as the acceptance it is: it comes without a token, so repeated once the job runs it
    // could keep a dead node's job from being reassigned (and have it paid at its unreported end). Best effort:
    // it must not keep the acceptance from its workflow.
    await alive(job, nodeId, 'accepted').catch((err) => deps.log.warn({ err: String(err), jobId, nodeId }, 'could not pass an acceptance on as a sign of life'));
    try {
      await workflows.accepted(jobId, nodeId);
    } catch (err) {
      // The shipping node sends it once and ignores the answer: a job it runs must not end as never started
      // (refunded, the node unpaid) for one failed call. Tried again in the background while Temporal is away.
      if (err instanceof UnavailableError) void deliverAcceptedLater(jobId, nodeId);
      throw err;
    }
  }

  /** Acceptances being delivered in the background, by job and node: a repeat joins the one on its way. */
  const deliveringAccepted = new Set<string>();

  /** Delivers an acceptance Temporal did not take, every ACCEPT_RETRY_MS, for ACCEPT_RETRY_TRIES tries. */
  async function deliverAcceptedLater(jobId: string, nodeId: string): Promise<void> {
    const key = `${jobId}/${nodeId}`;
    if (deliveringAccepted.has(key)) return;
    deliveringAccepted.add(key);
    try {
      await deliverAccepted(jobId, nodeId);
    } finally {
      deliveringAccepted.delete(key);
    }
  }

  async function deliverAccepted(jobId: string, nodeId: string): Promise<void> {
    for (let tryNo = 0; tryNo < ACCEPT_RETRY_TRIES; tryNo++) {
      await new Promise((r) => setTimeout(r, ACCEPT_RETRY_MS).unref());
      try {
        await workflows.accepted(jobId, nodeId);
        return;
      } catch (err) {
        if (!(err instanceof UnavailableError)) return; // refused (the node no longer holds it, the job ended): done
      }
    }
    deps.log.warn({ jobId, nodeId }, 'an acceptance could not be delivered to its job: Temporal did not take it');
  }

  /**
   * Stores a progress report and passes it to the job's workflow (throttled there: Postgres has every report).
   * @throws NotFoundError, ForbiddenError, ConflictError as heldJob.
   */
  async function progress(r: ProgressReport): Promise<void> {
    // Stored only while this node holds the job; only a refused report reads the job to say why.
    const job = await jobsRepo.updateProgress(db, r.jobId, r.nodeId, r);
    if (!job) {
      await heldJob(r.nodeId, r.jobId);
      throw new ForbiddenError(`node ${r.nodeId} does not hold job ${r.jobId}`);
    }
    await alive(job, r.nodeId, 'progress');
    await workflows.progress(r.jobId, job.attempts, { nodeId: r.nodeId, progress: r.progress, epoch: r.epoch });
  }

  /**
   * The node finished the job. Resolves once its payment is released; a retried report of a job this
   * node already completed returns the same payment.
   */
  async function completed(
    nodeId: string,
    jobId: string,
    result: { finalMetrics?: Record<string, number>; modelWeightsUri?: string; modelWeightsHash?: string },
  ): Promise<{ paymentReleased: boolean; txRef: string }> {
    const job = await jobsRepo.getJob(db, jobId);
    if (!job) throw new NotFoundError('job', jobId);
    if (job.status === 'completed' && job.assignedNodeId === nodeId) {
      // A retried report of a job this node completed: the same answer (paid, or still owed).
      const txRef = await jobsRepo.releaseTxRef(db, jobId);
      return { paymentReleased: !!txRef, txRef: txRef ?? '' };
    }
    await heldJob(nodeId, jobId, job);
    if (result.finalMetrics && Object.keys(result.finalMetrics).length > 0) {
      await jobsRepo.updateProgress(db, jobId, nodeId, { metrics: result.finalMetrics });
    }
    return workflows.complete(jobId, { nodeId, ...result });
  }

  /** The node failed the job: it is retried on another node or fails and is refunded. */
  async function failed(nodeId: string, jobId: string, message: string): Promise<void> {
    await heldJob(nodeId, jobId);
    await workflows.fail(jobId, nodeId, message || 'no reason given');
  }

  /** @throws NotFoundError */
  async function metrics(nodeId: string, from: Date, to: Date) {
    if (!(await nodesRepo.getNode(db, nodeId))) throw new NotFoundError('node', nodeId);
    return nodesRepo.getMetrics(db, nodeId, from, to);
  }

  /** Whether the node should keep working on the job (it still holds it and the job is active). */
  async function shouldContinue(nodeId: string, jobId: string): Promise<boolean> {
    const job = await jobsRepo.getJob(db, jobId);
    return !!job && job.assignedNodeId === nodeId && !isTerminal(job.status);
  }

  return { register, linkWallet, unlinkWallet, requireNodeOwner, accepted, progress, completed, failed, metrics, shouldContinue, heartbeat: heartbeats.beat };
}

export type NodeService = ReturnType<typeof createNodeService>;
