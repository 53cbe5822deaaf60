import { sql } from 'drizzle-orm';
import {
  bigint,
  bigserial,
  boolean,
  check,
  doublePrecision,
  index,
  integer,
  jsonb,
  pgEnum,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
} from 'drizzle-orm/pg-core';
import { JOB_PHASES, type JobSpec } from '../domain/job';
import type { DeviceCapsSpec } from '../domain/node';
import { RESERVATION_STATUSES } from '../domain/reservation';

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

export const jobPhase = pgEnum('job_phase', JOB_PHASES);
export const paymentLeg = pgEnum('payment_leg', ['escrow', 'release_node', 'release_platform', 'refund']);
/**
 * pending: recorded, no transaction signed yet · sent: a signed transaction is recorded (and maybe sent) ·
 * confirmed: on chain at the configured commitment · owed: waiting for the payee to register a wallet ·
 * failed: refused for good (the reason is in last_error).
 */
export const paymentState = pgEnum('payment_state', ['pending', 'sent', 'confirmed', 'owed', 'failed']);

/** What a node told us about itself beyond the columns matching needs. */
export interface NodeProfile {
  version: string;
  supportedFormats: string[];
  maxModelSize: number;
  supportsTerminalAccess: boolean;
  availableRuntimes: string[];
  stakedAmount: number;
}

export const nodes = pgTable(
  'nodes',
  {
    id: text('id').primaryKey(),
    name: text('name').notNull().default(''),
    cpuCores: integer('cpu_cores').notNull().default(0),
    ramTotal: bigint('ram_total', { mode: 'number' }).notNull().default(0),
    ramAvailable: bigint('ram_available', { mode: 'number' }).notNull().default(0),
    devices: jsonb('devices').$type<DeviceCapsSpec[]>().notNull().default([]),
    /** Device types the node has, for indexed matching. */
    deviceTypes: text('device_types').array().notNull().default(sql`'{}'::text[]`),
    /** The largest memory any one device offers (VRAM for GPUs), bytes. */
    maxDeviceMemory: bigint('max_device_memory', { mode: 'number' }).notNull().default(0),
    ipAddress: text('ip_address').notNull().default(''),
    port: integer('port').notNull().default(0),
    region: text('region').notNull().default(''),
    walletAddress: text('wallet_address').notNull().default(''),
    /**
     * The wallet is its user's account wallet (the token's wallet_address claim at registration, else the first
     * wallet the user linked), not one the node named: it follows the account (a new claim, a link or an unlink)
     * until a registration names a wallet.
     */
    walletFromAccount: boolean('wallet_from_account').notNull().default(false),
    /** The user (the verified token's `sub`) it belongs to, when AUTH_JWT_SECRET is set; others are refused. */
    owner: text('owner'),
    reputation: doublePrecision('reputation').notNull().default(0.5),
    /** What the hardware can do (cores, RAM, accelerators), independent of reputation. */
    computeScore: doublePrecision('compute_score').notNull().default(0),
    /** Effective hourly price in whole CYXWIZ: the node's announced price, else the list price. */
    pricePerHour: doublePrecision('price_per_hour').notNull().default(0),
    /** The NodePricing the node announced, if any. */
    pricing: jsonb('pricing').$type<Record<string, unknown>>().notNull().default({}),
    /** Jobs the node runs at once. */
    capacity: integer('capacity').notNull().default(1),
    /** Set by reputation penalties; the node matches nothing until then. */
    bannedUntil: ts('banned_until'),
    /**
     * The live reservation holding the whole node (hotel-room model), or null. A held node matches no job and
     * shows as unavailable in discovery; heartbeats do not clear it, only the reservation's end does.
     */
    reservedBy: text('reserved_by'),
    /** online | offline | dormant (offline for a day: out of the node caches); matching also requires a fresh last_heartbeat. */
    status: text('status').notNull().default('online'),
    profile: jsonb('profile').$type<Partial<NodeProfile>>().notNull().default({}),
    totalJobsCompleted: integer('total_jobs_completed').notNull().default(0),
    totalJobsFailed: integer('total_jobs_failed').notNull().default(0),
    /**
     * Milliseconds the node held job attempts that ended with an outcome of its own (completed, failed, timed out,
     * lost): from each attempt's 'assigned' event to the recording of its outcome, or to its last heartbeat when
     * it was lost. Added once per attempt with the attempt's reputation event (nodes-repo recordReputationEvent).
     */
    computeMs: bigint('compute_ms', { mode: 'number' }).notNull().default(0),
    /**
     * Milliseconds since `uptime_since` the node was online: the sum of the gaps between its consecutive
     * heartbeats that were no longer than the offline timeout (a longer gap counts as offline throughout).
     * Grown by the heartbeat flush (applyHeartbeats); see domain/node-stats.ts for the percentage.
     */
    onlineMs: bigint('online_ms', { mode: 'number' }).notNull().default(0),
    /** Start of the uptime record: the first registration (or, for nodes older than it, migration 0004). */
    uptimeSince: ts('uptime_since').notNull().defaultNow(),
    registeredAt: ts('registered_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
    lastHeartbeat: ts('last_heartbeat').notNull().defaultNow(),
  },
  (t) => [
    index('nodes_endpoint_idx').on(t.ipAddress, t.port),
    index('nodes_wallet_idx').on(t.walletAddress).where(sql`${t.walletAddress} <> ''`),
    index('nodes_heartbeat_idx').on(t.lastHeartbeat),
    // The node cache reloads the rows whose capabilities changed since its last refresh, every second.
    index('nodes_updated_idx').on(t.updatedAt),
    // Region filters compare lower(region).
    index('nodes_region_lower_idx').on(sql`lower(${t.region})`),
    index('nodes_price_idx').on(t.pricePerHour),
    index('nodes_reserved_idx').on(t.reservedBy).where(sql`${t.reservedBy} is not null`),
    // A user's nodes, when a wallet the user links or unlinks moves their payouts.
    index('nodes_owner_idx').on(t.owner).where(sql`${t.owner} is not null`),
    check('nodes_reputation_range', sql`${t.reputation} >= 0 and ${t.reputation} <= 1`),
  ],
);

export const jobs = pgTable(
  'jobs',
  {
    id: text('id').primaryKey(),
    status: jobPhase('status').notNull().default('pending'),
    jobType: text('job_type').notNull(),
    priority: text('priority').notNull(),
    /** 0 = CRITICAL … 3 = LOW: the queue order is (priority_rank, created_at). */
    priorityRank: integer('priority_rank').notNull().default(2),
    /** Nodes that failed or lost this job: it never goes back to them. */
    excludedNodes: text('excluded_nodes').array().notNull().default(sql`'{}'::text[]`),
    /**
     * Nodes that refused the job (or could not be reached) since its last assignment. The job offers them again
     * after a wait, but while it waits it holds none of them back from the jobs behind it (job_wants_node).
     */
    refusedNodes: text('refused_nodes').array().notNull().default(sql`'{}'::text[]`),
    requiredDevice: text('required_device').notNull(),
    estimatedMemory: bigint('estimated_memory', { mode: 'number' }).notNull().default(0),
    config: jsonb('config').$type<JobSpec>().notNull(),
    /** Hash of the submitted config: a second SubmitJob with the same id must carry the same job. */
    configHash: text('config_hash').notNull(),
    submitter: text('submitter').notNull().default(''),
    /** The user (the verified token's `sub`) it belongs to, when AUTH_JWT_SECRET is set; others are refused. */
    owner: text('owner'),
    paymentUnits: bigint('payment_units', { mode: 'bigint' }).notNull(),
    assignedNodeId: text('assigned_node_id'),
    attempts: integer('attempts').notNull().default(0),
    progress: doublePrecision('progress').notNull().default(0),
    currentEpoch: integer('current_epoch').notNull().default(0),
    metrics: jsonb('metrics').$type<Record<string, number>>().notNull().default({}),
    errorCode: integer('error_code'),
    errorMessage: text('error_message'),
    /** Highest job_events.seq written, so the workflow's event numbering survives retries. */
    eventSeq: integer('event_seq').notNull().default(0),
    /**
     * When a match first found no node for the job (null until then, and again once it is assigned). A job
     * still pending (its escrow on its way) with this set already waits: wake-ups reach it and it is ahead
     * of later jobs, like a queued one.
     */
    waitingSince: ts('waiting_since'),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
    /** When the current attempt was assigned (its node watch starts after this). */
    assignedAt: ts('assigned_at'),
    startedAt: ts('started_at'),
    endedAt: ts('ended_at'),
    deletedAt: ts('deleted_at'),
  },
  (t) => [
    index('jobs_status_idx').on(t.status, t.createdAt),
    index('jobs_queue_idx').on(t.priorityRank, t.createdAt).where(sql`${t.status} in ('pending', 'queued')`),
    index('jobs_node_idx').on(t.assignedNodeId).where(sql`${t.status} in ('assigned', 'running')`),
    index('jobs_submitter_idx').on(t.submitter, t.createdAt),
    // With auth on, a user's ListJobs reads its own jobs, newest first.
    index('jobs_owner_idx').on(t.owner, t.createdAt).where(sql`${t.owner} is not null`),
    index('jobs_created_idx').on(t.createdAt, t.id),
    check('jobs_progress_range', sql`${t.progress} >= 0 and ${t.progress} <= 1`),
    check('jobs_payment_positive', sql`${t.paymentUnits} > 0`),
  ],
);

/** Append-only: one row per state change of a job, with why and who. */
export const jobEvents = pgTable(
  'job_events',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    jobId: text('job_id').notNull(),
    /** Per-job sequence number assigned by the workflow: retries of the same change write one row. */
    seq: integer('seq').notNull(),
    fromStatus: jobPhase('from_status'),
    toStatus: jobPhase('to_status').notNull(),
    reason: text('reason').notNull(),
    actor: text('actor').notNull(),
    nodeId: text('node_id'),
    attempt: integer('attempt').notNull().default(0),
    data: jsonb('data').$type<Record<string, unknown>>().notNull().default({}),
    at: ts('at').notNull().defaultNow(),
  },
  (t) => [uniqueIndex('job_events_job_seq_idx').on(t.jobId, t.seq)],
);

/**
 * Wallets a user proved are theirs (a signature by the wallet's key, REST `POST /api/wallet-links`), with auth
 * on: the user may pay from them (ReserveNode, SubmitJob with escrow_tx_hash, reclaims) like from the wallet its
 * token names. The website's tokens need not name one.
 */
export const userWallets = pgTable(
  'user_wallets',
  {
    userId: text('user_id').notNull(),
    wallet: text('wallet').notNull(),
    linkedAt: ts('linked_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.wallet] })],
);

/**
 * Escrow accounts opened ahead of their job (REST `POST /api/escrows/:jobId`), at the platform's cost, until a
 * job's ledger takes them over or the reconciliation closes them unused (a day later), its rent taken back.
 */
export const openedEscrowAccounts = pgTable(
  'opened_escrow_accounts',
  {
    jobId: text('job_id').primaryKey(),
    /**
     * When it was opened: it is closed once nothing used it for a day from then. Milliseconds, as the app's
     * clock writes them and the reconciliation's cursor reads them back.
     */
    openedAt: timestamp('opened_at', { withTimezone: true, mode: 'date', precision: 3 }).notNull().defaultNow(),
  },
  (t) => [index('opened_escrow_accounts_opened_idx').on(t.openedAt, t.jobId)],
);

/**
 * The payment ledger: one row per money leg of a job. Amounts are integers in the token's smallest units.
 * `idempotency_key` (job id + leg) makes every leg happen at most once however often it is retried.
 */
export const payments = pgTable(
  'payments',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    jobId: text('job_id').notNull(),
    leg: paymentLeg('leg').notNull(),
    amount: bigint('amount', { mode: 'bigint' }).notNull(),
    fromAccount: text('from_account').notNull(),
    toAccount: text('to_account').notNull(),
    state: paymentState('state').notNull().default('pending'),
    idempotencyKey: text('idempotency_key').notNull(),
    /** The transaction's signature (or the payer's escrow transaction). */
    txRef: text('tx_ref'),
    memo: text('memo').notNull().default(''),
    /** The signed transaction of the current attempt, recorded before it is sent, so a retry can resend it. */
    txBytes: text('tx_bytes'),
    /** The attempt can land until the chain passes this block height; after that a new one may be signed. */
    lastValidBlockHeight: bigint('last_valid_block_height', { mode: 'number' }),
    sendAttempts: integer('send_attempts').notNull().default(0),
    slot: bigint('slot', { mode: 'number' }),
    lastError: text('last_error'),
    /** On an escrow leg: when its escrow account, emptied by the settlement, was closed (its rent taken back). */
    accountClosedAt: ts('account_closed_at'),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('payments_idempotency_idx').on(t.idempotencyKey),
    // Escrow accounts still open: the candidates for closing once their ledger is settled.
    index('payments_open_escrow_idx').on(t.id).where(sql`${t.leg} = 'escrow' and ${t.accountClosedAt} is null`),
    // Refunds not settled: the reconciliation pays those nobody is settling (settleQuietRefunds).
    index('payments_open_refund_idx').on(t.id).where(sql`${t.leg} = 'refund' and ${t.state} in ('pending', 'failed')`),
    uniqueIndex('payments_job_leg_idx').on(t.jobId, t.leg),
    // A payer's transaction funds each escrow account it pays into once: one job or one reclaim of that account.
    // Keyed by the account, not the transaction alone, because one transaction may pay several escrow accounts.
    uniqueIndex('payments_escrow_account_tx_idx').on(t.toAccount, t.txRef).where(sql`${t.leg} = 'escrow'`),
    index('payments_state_idx').on(t.state, t.updatedAt),
    index('payments_from_idx').on(t.fromAccount),
    index('payments_to_idx').on(t.toAccount),
    check('payments_amount_nonnegative', sql`${t.amount} >= 0`),
  ],
);

export const nodeMetrics = pgTable(
  'node_metrics',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    nodeId: text('node_id').notNull(),
    at: ts('at').notNull(),
    cpuUsage: doublePrecision('cpu_usage').notNull().default(0),
    gpuUsage: doublePrecision('gpu_usage').notNull().default(0),
    memoryUsage: doublePrecision('memory_usage').notNull().default(0),
    networkThroughput: doublePrecision('network_throughput').notNull().default(0),
    powerConsumption: doublePrecision('power_consumption').notNull().default(0),
  },
  // BRIN on `at` (rows arrive in time order): retention deletes by time without reading the table.
  (t) => [index('node_metrics_node_at_idx').on(t.nodeId, t.at), index('node_metrics_at_brin').using('brin', t.at)],
);

/** Jobs a node must stop (cancelled, or reassigned away after it was lost); returned in Heartbeat replies. */
export const nodeJobCancels = pgTable(
  'node_job_cancels',
  {
    nodeId: text('node_id').notNull(),
    jobId: text('job_id').notNull(),
    reason: text('reason').notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.nodeId, t.jobId] })],
);

/** Every change of a node's reputation, with the job and event that caused it (evidence). */
export const reputationEvents = pgTable(
  'reputation_events',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    nodeId: text('node_id').notNull(),
    jobId: text('job_id'),
    /** job_completed | job_failed | node_lost | ban | ban_expired */
    kind: text('kind').notNull(),
    delta: doublePrecision('delta').notNull(),
    reputationAfter: doublePrecision('reputation_after').notNull(),
    reason: text('reason').notNull(),
    bannedUntil: ts('banned_until'),
    at: ts('at').notNull().defaultNow(),
  },
  (t) => [index('reputation_events_node_idx').on(t.nodeId, t.at), uniqueIndex('reputation_events_job_kind_idx').on(t.nodeId, t.jobId, t.kind)],
);

/**
 * A job's hold on one unit of a node's capacity, taken when the job is matched and released when its
 * attempt ends. Taken under a lock on the node row, so no two jobs are ever placed on the same free capacity.
 */
export const nodeClaims = pgTable(
  'node_claims',
  {
    nodeId: text('node_id').notNull(),
    jobId: text('job_id').notNull(),
    claimedAt: ts('claimed_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.nodeId, t.jobId] }), index('node_claims_job_idx').on(t.jobId)],
);

export const reservationStatus = pgEnum('reservation_status', RESERVATION_STATUSES);

/**
 * One reservation of a whole node for a time (the Engine's "hotel room" flow). Its money lives in `payments`
 * under the reservation id (the first escrow) and `<id>/ext-<n>` (each extension's escrow). The workflow with
 * the reservation id drives it; this row is what the RPCs read and what survives every restart.
 */
export const reservations = pgTable(
  'reservations',
  {
    id: text('id').primaryKey(),
    nodeId: text('node_id').notNull(),
    userWallet: text('user_wallet').notNull(),
    /** The user (the verified token's `sub`) it belongs to, when AUTH_JWT_SECRET is set; others are refused. */
    owner: text('owner'),
    status: reservationStatus('status').notNull().default('pending'),
    /** Minutes bought so far (the first duration plus every extension). */
    durationMinutes: integer('duration_minutes').notNull(),
    /** The node's hourly price when reserved, smallest units per hour. */
    pricePerHourUnits: bigint('price_per_hour_units', { mode: 'bigint' }).notNull(),
    /** Everything escrowed so far, smallest units. */
    escrowUnits: bigint('escrow_units', { mode: 'bigint' }).notNull(),
    /** Extensions escrowed so far (each one is payment pot `<id>/ext-<n>`). */
    extensions: integer('extensions').notNull().default(0),
    escrowAccount: text('escrow_account').notNull().default(''),
    /** Who funded the escrow (the user's wallet through its allowance, or the server's payer account). */
    fundedBy: text('funded_by').notNull().default(''),
    jobConfig: jsonb('job_config').$type<Record<string, unknown>>().notNull().default({}),
    startAt: ts('start_at').notNull(),
    endAt: ts('end_at').notNull(),
    engineLastHeartbeat: ts('engine_last_heartbeat'),
    trainingActive: boolean('training_active').notNull().default(false),
    jobProgress: doublePrecision('job_progress').notNull().default(0),
    currentMetrics: jsonb('current_metrics').$type<Record<string, number>>().notNull().default({}),
    currentJobId: text('current_job_id').notNull().default(''),
    jobsCompleted: integer('jobs_completed').notNull().default(0),
    engineReportedEnd: boolean('engine_reported_end').notNull().default(false),
    nodeReportedEnd: boolean('node_reported_end').notNull().default(false),
    endReason: text('end_reason'),
    endedAt: ts('ended_at'),
    timeUsedSeconds: bigint('time_used_seconds', { mode: 'number' }),
    paidUnits: bigint('paid_units', { mode: 'bigint' }),
    refundUnits: bigint('refund_units', { mode: 'bigint' }),
    paymentTx: text('payment_tx'),
    refundTx: text('refund_tx'),
    createdAt: ts('created_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [
    // At most one reservation holding a node, whatever races. One that is settling ('completing') has given its
    // node back already, so the next reservation may take it.
    uniqueIndex('reservations_live_node_idx').on(t.nodeId).where(sql`${t.status} in ('pending', 'active')`),
    index('reservations_wallet_idx').on(t.userWallet, t.createdAt),
    index('reservations_status_idx').on(t.status, t.endAt),
    // What a node is owed of its reservations (owingNode, at each registration with a wallet).
    index('reservations_node_idx').on(t.nodeId),
  ],
);

/**
 * The jobs counted in a reservation's jobs_completed, once each whoever reports them (the node's
 * ReportJobCompleteFromNode, the Engine's ConfirmJobComplete) and however often.
 */
export const reservationJobs = pgTable(
  'reservation_jobs',
  {
    reservationId: text('reservation_id')
      .notNull()
      .references(() => reservations.id),
    jobId: text('job_id').notNull(),
    /** Who reported it first: 'node' or 'engine'. */
    reportedBy: text('reported_by').notNull(),
    success: boolean('success').notNull(),
    at: ts('at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.reservationId, t.jobId] })],
);

/**
 * The heartbeat relays: each API process's heartbeat hub, marked alive at every flush (database time). A node
 * whose watch lapsed is judged lost only once the relays have been up, without a gap, for as long as a node may
 * be silent: a watch that lapsed because the relay itself was down (an API restart, a Temporal or Postgres
 * outage) says nothing about the node.
 */
export const heartbeatRelays = pgTable('heartbeat_relays', {
  id: text('id').primaryKey(),
  /** When this process's relay started, or came back after a gap in its marks. */
  upSince: ts('up_since').notNull().defaultNow(),
  at: ts('at').notNull().defaultNow(),
});
