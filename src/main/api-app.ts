import { SendTransactionError, SolanaJSONRPCError } from '@solana/web3.js';
import { Client, Connection } from '@temporalio/client';
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createGrpcServer } from '../api/grpc/server';
import { createRestApp, nodeJson } from '../api/rest/app';
import { SHIPPING_NODE_P2P_SECRET, type Config } from '../config';
import { settlementFor } from './chain-setup';
import { registerSearchAttributes } from '../infra/search-attributes';
import { temporalConnectionOptions } from './temporal-connection';
import { openDatabase } from '../db/client';
import * as jobsRepo from '../db/jobs-repo';
import * as nodesRepo from '../db/nodes-repo';
import * as reservationsRepo from '../db/reservations-repo';
import { sql } from 'drizzle-orm';
import { ApplicationFailure } from '@temporalio/common';
import type { ChainContext } from '../chain/context';
import { escrowAddress } from '../chain/instructions';
import { SettlementErrors } from '../chain/settlement';
import { ConflictError, DomainError, ForbiddenError, NotFoundError, UnauthenticatedError, TooManyRequestsError, UnavailableError, ValidationError } from '../domain/errors';
import { queuePosition } from '../db/node-cache';
import { createDiscoveryService } from '../services/discovery-service';
import { createWalletService, walletAddress } from '../services/wallet-service';
import { callerGate, createHeartbeatHub } from '../services/heartbeat-hub';
import { createJobChangeFeed } from '../services/job-change-feed';
import { createJobWorkflowGateway } from '../services/job-workflows';
import { createJobService } from '../services/jobs-service';
import { keyedQuota } from '../services/keyed-throttle';
import { createNodeService } from '../services/nodes-service';
import { createReservationService } from '../services/reservation-service';
import { bearerToken, userOf, verifyUserToken, walletClaimOf, type UserClaims } from '../services/user-token';
import { createWalletLinks, linkExpiry, linkMessage, requireUsersWallet } from '../services/wallet-links';
import { jobWorkflowOptions, reservationWorkflowOptions } from './workflow-options';

export interface RunningApi {
  grpcPort: number;
  restPort: number;
  stop(): Promise<void>;
}

const VERSION = '0.1.0';
/** New escrow accounts (rent the platform pays) one caller of `POST /api/escrows/:jobId` may have per minute. */
const NEW_ESCROW_ACCOUNTS_PER_MINUTE = 20;
/**
 * Requests one caller may make of the escrow routes per minute (opening and reclaiming): each costs RPC calls
 * (a reclaim's check of a transfer a few, over seconds) before anything is known to be worth it.
 */
const ESCROW_REQUESTS_PER_MINUTE = 120;

/**
 * A settlement's refusal as the REST caller should see it: a bad transfer names `field`, a refusal for good is a
 * conflict with its reason, and one that is only waiting on the chain is a 503 to ask again.
 */
function settlementRefusal(err: unknown, field: string, log: Logger): unknown {
  if (err instanceof DomainError) return err;
  if (!(err instanceof ApplicationFailure)) {
    // The RPC did not answer, or answered with an error of its own: the chain's to retry, not a server bug. Its
    // detail (the provider's hosts and replies) goes to the log. Anything else (Postgres, a bug) is a 500.
    if (!isRpcFailure(err)) return err;
    log.warn({ err }, 'escrow route: the chain call failed');
    return new UnavailableError('the Solana RPC did not answer or refused the call: ask again (it is safe)');
  }
  if (err.type === SettlementErrors.escrowRejected) return new ValidationError(field, err.message);
  if (err.nonRetryable) return new ConflictError(err.message);
  return new UnavailableError(`${err.message} (ask again: it is safe)`);
}

/** An error of the Solana RPC or of the way to it (web3.js's JSON-RPC errors, a refused send, the network). */
function isRpcFailure(err: unknown): boolean {
  if (err instanceof SolanaJSONRPCError || err instanceof SendTransactionError) return true;
  const text = `${(err as Error | undefined)?.message ?? ''} ${String((err as { cause?: unknown } | undefined)?.cause ?? '')}`;
  // web3.js reaches the RPC with fetch: its network failures say so ("fetch failed"); its own calls, "failed to get".
  return /fetch failed|failed to get|Server responded with|timed out/i.test(text);
}

/** Composition root of the API process: gRPC for nodes and Engines, REST for operators. */
export async function startApi(
  config: Config,
  env: { databaseUrl: string; temporalAddress: string; chain: ChainContext; log: Logger },
): Promise<RunningApi> {
  const { log } = env;
  if (config.p2p.secret === SHIPPING_NODE_P2P_SECRET && config.chain.cluster !== 'localnet') {
    log.warn(
      { cluster: config.chain.cluster },
      "P2P_JWT_SECRET is the shipping node's public default: anyone can mint P2P tokens for nodes that keep it; set your own here and on the nodes (--p2p-secret)",
    );
  }
  if (!config.authJwtSecret && config.chain.cluster !== 'localnet') {
    log.warn(
      { cluster: config.chain.cluster },
      "AUTH_JWT_SECRET is empty: every call is anonymous, so anyone can register under a node's id (and its wallet, which is paid what the node is owed) and read any job; set the website login's JWT secret",
    );
  }
  const database = openDatabase(env.databaseUrl, { max: 20 });
  const connection = await Connection.connect(temporalConnectionOptions(config, env.temporalAddress));
  // Jobs are started with these: a cluster whose worker has not registered them yet refuses every start.
  await registerSearchAttributes(connection, config.temporal.namespace, log);
  const client = new Client({ connection, namespace: config.temporal.namespace });
  const walletLinks = createWalletLinks(database.db);
  const workflows = createJobWorkflowGateway({
    client,
    taskQueue: config.temporal.taskQueue,
    options: jobWorkflowOptions(config),
    tokenDecimals: config.payments.tokenDecimals,
    progressSignalIntervalMs: config.jobs.progressSignalIntervalMs,
  });
  const reservations = createReservationService({
    db: database.db,
    client,
    taskQueue: config.temporal.taskQueue,
    options: reservationWorkflowOptions(config),
    p2pSecret: config.p2p.secret,
    tokenDecimals: config.payments.tokenDecimals,
    offlineAfterMs: config.nodes.offlineAfterMs,
    engineTimeoutMs: config.reservations.engineTimeoutMs,
    escrowWaitMs: config.reservations.escrowWaitMs,
    releaseWaitMs: config.reservations.releaseWaitMs,
    bindWallet: config.authBindWallet,
    walletLinks,
  });
  // One quota per caller for new node records, whether a registration or a heartbeat from an unknown id makes them.
  const mayCreateNode = callerGate(config.nodes.newNodesPerMinute);
  const heartbeats = createHeartbeatHub({
    db: database.db,
    mayCreateNode,
    workflows,
    reservations,
    flushMs: config.nodes.heartbeatFlushMs,
    offlineAfterMs: config.nodes.offlineAfterMs,
    metricsSampleMs: config.nodes.metricsSampleMs,
    metricsRetentionMs: config.nodes.metricsRetentionMs,
    tokenDecimals: config.payments.tokenDecimals,
    log: log.child({ component: 'heartbeats' }),
  });
  const feed = createJobChangeFeed({ databaseUrl: env.databaseUrl, log });
  await feed.start();
  const settlement = settlementFor(config, env.chain, database.db);
  const jobs = createJobService({
    db: database.db,
    workflows,
    p2p: config.p2p,
    bindWallet: config.authBindWallet,
    walletLinks,
    verifyEscrow: async (p) => {
      try {
        await settlement.verifyEscrowTransaction(p);
      } catch (err) {
        if (err instanceof ApplicationFailure) throw new ValidationError('config.escrow_tx_hash', err.message);
        throw err;
      }
    },
  });
  const wallets = createWalletService({ db: database.db, chain: env.chain });
  const nodes = createNodeService({
    db: database.db,
    workflows,
    heartbeats,
    reservations,
    offlineAfterMs: config.nodes.offlineAfterMs,
    tokenDecimals: config.payments.tokenDecimals,
    mayCreateNode,
    walletLinks,
    log,
  });
  const discovery = createDiscoveryService({ db: database.db, offlineAfterMs: config.nodes.offlineAfterMs });

  const grpcServer = createGrpcServer({ jobs, nodes, discovery, wallets, reservations, feed, tokenDecimals: config.payments.tokenDecimals, log: log.child({ component: 'grpc' }), authJwtSecret: config.authJwtSecret, authCheckExpiry: config.authCheckExpiry, maySubmitJob: callerGate(config.jobs.submitsPerMinute) });
  const grpcPort = await grpcServer.listen(config.grpc.host, config.grpc.port);
  heartbeats.start();

  const newEscrowAccounts = keyedQuota(NEW_ESCROW_ACCOUNTS_PER_MINUTE, 60_000);
  const escrowRequests = keyedQuota(ESCROW_REQUESTS_PER_MINUTE, 60_000);
  const rationEscrowRequests = (caller: string) => {
    if (!escrowRequests.pass(caller, Date.now())) throw new TooManyRequestsError(`too many requests of the escrow routes: ask again in a minute`);
  };
  /** The REST caller's verified token claims (auth on), undefined with auth off. @throws UnauthenticatedError */
  const restUser = (authorization: string | undefined): UserClaims | undefined => {
    if (!config.authJwtSecret) return undefined;
    const token = bearerToken(authorization);
    if (!token) throw new UnauthenticatedError('authorization: Bearer <token> is required');
    try {
      return verifyUserToken(config.authJwtSecret, token, undefined, config.authCheckExpiry);
    } catch (err) {
      throw new UnauthenticatedError(`authorization: invalid token: ${(err as Error).message}`);
    }
  };
  const app = createRestApp({
    log,
    operatorToken: config.rest.operatorToken,
    version: VERSION,
    startedAt: new Date(),
    checks: [
      { name: 'database', check: async () => void (await database.db.execute(sql`select 1`)) },
      { name: 'temporal', check: async () => void (await connection.workflowService.getSystemInfo({})) },
      { name: 'solana', check: async () => void (await env.chain.connection.getLatestBlockhash(env.chain.commitment)) },
    ],
    nodes: {
      list: async ({ limit, offset }) => {
        const { rows, total } = await nodesRepo.listNodes(database.db, limit, offset);
        return { rows: rows.map((r) => nodeJson(r.node, r.activeJobs, config.nodes.offlineAfterMs)), total };
      },
      get: async (id) => {
        const node = await nodesRepo.getNode(database.db, id);
        if (!node) throw new NotFoundError('node', id);
        const [reputation, held] = await Promise.all([
          nodesRepo.reputationHistory(database.db, id),
          jobsRepo.activeJobsOnNodes(database.db, [id]),
        ]);
        return { ...nodeJson(node, held.length, config.nodes.offlineAfterMs), jobs: held.map((j) => j.id), reputationEvents: reputation };
      },
    },
    reservations: {
      list: async (q) => {
        const page = await reservations.list({ userId: q.wallet ?? '', pageSize: q.pageSize, pageToken: q.pageToken, activeOnly: q.activeOnly });
        return { rows: page.rows.map(reservationJson), total: page.total, nextPageToken: page.nextPageToken };
      },
      get: async (id) => {
        const r = await reservations.get(id);
        return { ...reservationJson(r), payments: (await reservationsRepo.potPayments(database.db, id)).map((p) => ({ potId: p.jobId, ...paymentJson(p) })) };
      },
    },
    walletLinks: {
      user: (authorization) => {
        const claims = restUser(authorization);
        if (!claims) throw new ConflictError('authentication is off (AUTH_JWT_SECRET is unset): wallets are not tied to users');
        const user = userOf(claims);
        if (!user) throw new ForbiddenError('authorization: the token names no user (sub): no wallet can be linked to it');
        return { user, claim: walletClaimOf(claims) };
      },
      // The user's nodes without a wallet of their own (shipping nodes name none) follow the links.
      link: (user, claim, wallet, signature, expiresAt) => nodes.linkWallet(user, claim, wallet, signature, expiresAt),
      list: (user) => walletLinks.list(user),
      unlink: (user, claim, wallet) => nodes.unlinkWallet(user, claim, wallet),
      message: (user, wallet) => {
        const expiresAt = linkExpiry();
        return { message: linkMessage(user, walletAddress(wallet, 'wallet').toBase58(), expiresAt), expiresAt };
      },
    },
    escrows: {
      caller: (authorization) => {
        const claims = restUser(authorization);
        return claims && `user ${userOf(claims)}`;
      },
      open: async (jobId, caller) => {
        rationEscrowRequests(caller);
        try {
          const account = await settlement.openEscrowAccount(jobId, () => newEscrowAccounts.pass(caller, Date.now()));
          return { jobId, escrowAccount: account.toBase58(), mint: env.chain.mint.toBase58(), decimals: env.chain.decimals };
        } catch (err) {
          throw settlementRefusal(err, 'jobId', log);
        }
      },
      reclaim: async (jobId, transfer, caller, authorization) => {
        rationEscrowRequests(caller);
        const payer = walletAddress(transfer.paymentAddress, 'paymentAddress').toBase58();
        // With auth on, a payer's transfer goes back at its own user's asking only (as SubmitJob binds it).
        const claims = restUser(authorization);
        if (claims && config.authBindWallet) {
          await requireUsersWallet(walletLinks, { userId: userOf(claims), claim: walletClaimOf(claims), wallet: payer, field: 'paymentAddress' });
        }
        try {
          const leg = await settlement.reclaimTransfer({ jobId, payer, signature: transfer.escrowTxHash });
          return { amount: leg.amount, to: leg.to, txRef: leg.txRef };
        } catch (err) {
          throw settlementRefusal(err, 'escrowTxHash', log);
        }
      },
    },
    stats: async () => {
      const onlineSince = new Date(Date.now() - config.nodes.offlineAfterMs);
      const [n, j] = await Promise.all([nodesRepo.nodeCounts(database.db, onlineSince), jobsRepo.jobCountsByStatus(database.db)]);
      return { nodes: { ...n, offline: n.total - n.online }, jobs: j };
    },
    jobs: {
      get: jobs.get,
      events: jobs.events,
      payments: async (id) =>
        (await jobsRepo.escrowAccountLedger(database.db, id, escrowAddress(env.chain.authority.publicKey, id).toBase58())).map((p) => ({
          ...paymentJson(p),
          ...(p.jobId !== id && { reclaim: p.jobId }),
        })),
      queuePosition: (id) => queuePosition(database.db, id),
      list: (q) => jobs.list(q),
    },
  });
  const http: Server = await new Promise((resolve, reject) => {
    const s = app.listen(config.rest.port, config.rest.host, () => resolve(s));
    s.once('error', reject);
  });
  const address = http.address();
  const restPort = typeof address === 'object' && address ? address.port : config.rest.port;

  async function stop(): Promise<void> {
    await grpcServer.shutdown();
    await new Promise<void>((resolve) => http.close(() => resolve()));
    await heartbeats.stop();
    await feed.close();
    await connection.close();
    await database.close();
  }

  return { grpcPort, restPort, stop };
}

/** A reservation as operators see it over REST (amounts in smallest units, as decimal strings). */
function reservationJson(r: reservationsRepo.ReservationWithNode) {
  return {
    id: r.id,
    status: r.status,
    nodeId: r.nodeId,
    nodeEndpoint: r.nodeEndpoint,
    userWallet: r.userWallet,
    durationMinutes: r.durationMinutes,
    extensions: r.extensions,
    pricePerHourUnits: r.pricePerHourUnits.toString(),
    escrowUnits: r.escrowUnits.toString(),
    escrowAccount: r.escrowAccount,
    fundedBy: r.fundedBy,
    startAt: r.startAt,
    endAt: r.endAt,
    engineLastHeartbeat: r.engineLastHeartbeat,
    trainingActive: r.trainingActive,
    jobProgress: r.jobProgress,
    jobsCompleted: r.jobsCompleted,
    endReason: r.endReason,
    endedAt: r.endedAt,
    timeUsedSeconds: r.timeUsedSeconds,
    paidUnits: r.paidUnits?.toString() ?? null,
    refundUnits: r.refundUnits?.toString() ?? null,
    paymentTx: r.paymentTx,
    refundTx: r.refundTx,
  };
}

/** A payment leg as operators see it (the signed transaction bytes and retry bookkeeping stay inside). */
function paymentJson(p: Awaited<ReturnType<typeof jobsRepo.escrowAccountLedger>>[number] | Awaited<ReturnType<typeof reservationsRepo.potPayments>>[number]) {
  return {
    leg: p.leg,
    amount: p.amount.toString(),
    fromAccount: p.fromAccount,
    toAccount: p.toAccount,
    state: p.state,
    txRef: p.txRef,
    memo: p.memo,
    slot: p.slot,
    sendAttempts: p.sendAttempts,
    lastError: p.lastError,
    createdAt: p.createdAt,
    updatedAt: p.updatedAt,
  };
}
