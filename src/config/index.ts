import path from 'node:path';
import { z } from 'zod';

/** The longest delay Node's timers take (2^31 - 1 ms); a longer one fires at once. */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * A whole number from `min` to `max`, written in decimal digits: not `1e3`, `0x10`, `-1` or `2.5`, which a
 * plain number coercion would take (or read as 0 when empty).
 */
const whole = (min: number, max: number) =>
  z
    .string()
    .trim()
    .refine((v) => /^\d{1,16}$/.test(v) && Number(v) >= min && Number(v) <= max, `must be a whole number from ${min} to ${max}`)
    .transform(Number);
const port = whole(0, 65535);
const NOT_BLANK = 'must not be blank (unset it for the default)';
/**
 * Variables whose value set to nothing is refused rather than taken as unset: names and secrets whose default an
 * operator who set them did not mean (a shared schedule's task queue, the public P2P secret, no authentication).
 */
const BLANK_REFUSED = new Set(['TEMPORAL_NAMESPACE', 'TEMPORAL_TASK_QUEUE', 'P2P_JWT_SECRET', 'AUTH_JWT_SECRET']);
/** Milliseconds (a timer's delay), at least 1. */
const millis = whole(1, MAX_TIMER_MS);
/** Seconds that end up in a timer, at least 1. */
const seconds = whole(1, Math.floor(MAX_TIMER_MS / 1000));
const optionalUrl = z
  .string()
  .trim()
  .transform((v) => (v === '' ? undefined : v))
  .optional();

/** The node's P2P secret when started without `--p2p-secret` (shipping default of the C++ daemon). */
export const SHIPPING_NODE_P2P_SECRET = 'your-super-secret-jwt-key-change-in-production';

const schema = z.object({
  DATA_DIR: z.string().default('./data'),
  DATABASE_URL: optionalUrl,
  EMBEDDED_PG_PORT: port.default(54329),
  TEMPORAL_ADDRESS: optionalUrl,
  TEMPORAL_NAMESPACE: z.string().trim().min(1, NOT_BLANK).default('default'),
  TEMPORAL_TASK_QUEUE: z.string().trim().min(1, NOT_BLANK).default('cyxwiz-jobs'),
  /** TLS to the Temporal frontend (a production cluster, Temporal Cloud): on with any of the TLS files or an API key. */
  TEMPORAL_TLS: z.enum(['true', 'false']).optional(),
  /** PEM files: the client certificate and key (mTLS), and the server's CA when the system does not trust it. */
  TEMPORAL_TLS_CERT: optionalUrl,
  TEMPORAL_TLS_KEY: optionalUrl,
  TEMPORAL_TLS_CA: optionalUrl,
  TEMPORAL_TLS_SERVER_NAME: optionalUrl,
  /** An API key (Temporal Cloud); implies TLS. */
  TEMPORAL_API_KEY: optionalUrl,
  TEMPORAL_CLI: z.string().optional(),
  TEMPORAL_PORT: port.default(7233),
  TEMPORAL_UI_PORT: port.default(8233),
  GRPC_HOST: z.string().default('0.0.0.0'),
  GRPC_PORT: port.default(50051),
  REST_HOST: z.string().default('0.0.0.0'),
  REST_PORT: port.default(8080),
  /**
   * Set: REST's operator routes (stats, jobs, nodes, reservations) ask for `Authorization: Bearer <this>` (401
   * otherwise), so REST can face the network for its user routes (escrows, wallet links). Unset: they are open,
   * for a REST kept on an operators' network.
   */
  REST_OPERATOR_TOKEN: z.string().min(16, 'must be at least 16 characters (a secret)').optional(),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** A running job whose node is silent this long is treated as lost. */
  JOB_HEARTBEAT_TIMEOUT_S: seconds.default(30),
  /**
   * A job's workflow hears its node's progress reports at most this often per attempt (the first report
   * always; 0 = every report). Postgres stores every report.
   */
  JOB_PROGRESS_SIGNAL_INTERVAL_S: whole(0, 24 * 3600).default(10),
  /** Assignments a job may use (a node lost or failing the job uses one) before it fails and is refunded. */
  JOB_MAX_ATTEMPTS: whole(1, 100).default(3),
  /** Longest a single attempt may run on a node before it counts as failed. */
  JOB_MAX_RUNTIME_S: whole(1, 365 * 24 * 3600).default(7 * 24 * 3600),
  /**
   * Shipping nodes and Engines never report a job's end: an attempt whose node sent no progress report ends
   * this long after its expected run time (estimated_duration, else 10 minutes) — completed and paid when the
   * node accepted the job, failed and refunded when it never started. 0 = wait for a report until JOB_MAX_RUNTIME_S.
   */
  JOB_UNREPORTED_END_GRACE_S: whole(0, 365 * 24 * 3600).default(600),
  /** A queued job re-checks for fitting nodes this often even without a registration event. */
  JOB_REQUEUE_INTERVAL_S: seconds.default(30),
  /** Deadline of one NodeService.AssignJob call to a node. */
  NODE_ASSIGN_TIMEOUT_MS: millis.default(5000),
  /** Shipping nodes serve NodeService (AssignJob) on their registered port + 3 (50052 → 50055). */
  NODE_ASSIGN_PORT_OFFSET: whole(0, 65535).default(3),
  /** A node is online for matching while its last heartbeat is younger than this. */
  NODE_OFFLINE_AFTER_S: seconds.default(30),
  /** Heartbeats are absorbed in memory and written to Postgres in one batch this often. */
  HEARTBEAT_FLUSH_MS: millis.default(1000),
  /** One node_metrics sample per node per this many seconds of heartbeats. */
  NODE_METRICS_SAMPLE_S: seconds.default(60),
  NODE_METRICS_RETENTION_H: whole(1, 10 * 365 * 24).default(7 * 24),
  /**
   * New node records one caller may have made a minute in one API process (the signed-in user with auth on, else
   * the address the call came from): registrations of a new node and heartbeats from ids the server does not
   * know. 0 = no limit.
   */
  NEW_NODES_PER_MINUTE: whole(0, 1_000_000).default(60),
  /**
   * SubmitJob calls one caller may make a minute in one API process (the signed-in user with auth on, else the
   * address the call came from): each records a job and escrows its payment. 0 = no limit.
   */
  SUBMIT_JOBS_PER_MINUTE: whole(0, 1_000_000).default(600),
  /**
   * What an early ReleaseReservation pays the node: `full` (the default; the Engine promises "no refund for
   * early checkout" and the node turned other work away for the term) or `prorated` (the time used).
   */
  RESERVATION_EARLY_RELEASE: z.enum(['full', 'prorated']).default('full'),
  /** An Engine that has not sent EngineHeartbeat for this long shows as disconnected (the reservation runs on). */
  RESERVATION_ENGINE_TIMEOUT_S: seconds.default(60),
  /** A reserved node silent this long is lost: the user is refunded the unused time. */
  RESERVATION_NODE_TIMEOUT_S: seconds.default(30),
  /** Length of one reserved minute in ms: 60000, shorter only for tests and demos (billing scales with it). */
  RESERVATION_MINUTE_MS: whole(100, 60_000).default(60_000),
  /** How long ReserveNode waits for its escrow to confirm before it withdraws the reservation and answers 503. */
  RESERVATION_ESCROW_WAIT_MS: millis.default(25_000),
  /**
   * How long ReleaseReservation waits for the settlement's transactions before it answers with the amounts
   * decided (and no signatures yet); the settlement goes on (the Engine's deadline is 30 s).
   */
  RESERVATION_RELEASE_WAIT_MS: millis.default(25_000),
  /** HS256 secret of the P2P tokens nodes verify; must equal the nodes' --p2p-secret. */
  P2P_JWT_SECRET: z.string().refine((v) => v.trim() !== '', NOT_BLANK).default(SHIPPING_NODE_P2P_SECRET),
  P2P_TOKEN_TTL_S: whole(1, 365 * 24 * 3600).default(3600),
  /**
   * HS256 secret of the users' bearer tokens (the CyxWiz website's login JWT). Set: every gRPC call but node
   * discovery, NotifyJobAccepted and health needs `authorization: Bearer <token>` (UNAUTHENTICATED otherwise), as
   * the original server required. Empty (the default, for the embedded setup): no authentication.
   */
  AUTH_JWT_SECRET: z.string().refine((v) => v === '' || v.trim() !== '', 'must not be only blanks (empty turns authentication off)').default(''),
  /**
   * `true`: a token past its `exp` is refused on the Engine's calls. `false` (the default): as the original
   * server, which never checked `exp`; the shipping Engine never refreshes its token and restores saved sessions,
   * so it would otherwise lose every call (its early release among them) once the website's token expired. A
   * node daemon's calls never check it (see src/api/grpc/auth.ts).
   */
  AUTH_CHECK_EXPIRY: z.enum(['true', 'false']).default('false'),
  /**
   * `true` (the default): with auth on, ReserveNode spends `user_wallet`'s allowance only for the user whose token
   * names that wallet (its `wallet_address` claim, or a `sub` that is the wallet). `false` trusts `user_wallet`, as
   * the original server did (it looked the user's wallet up in its user database): for a website whose tokens
   * carry no wallet claim, where any signed-in user can then spend any wallet's allowance.
   */
  AUTH_BIND_WALLET: z.enum(['true', 'false']).default('true'),
  /** Platform share of a completed job's escrow, in basis points (1000 = 10 %). */
  PLATFORM_FEE_BPS: whole(0, 10_000).default(1000),
  /** Decimals of the CYXWIZ mint: payment amounts are integers in 10^-decimals tokens. */
  TOKEN_DECIMALS: whole(0, 18).default(9),
  /** A Solana JSON-RPC endpoint; unset = the local ledger (LiteSVM) that `npm start` runs. */
  SOLANA_RPC_URL: optionalUrl,
  SOLANA_CLUSTER: z.enum(['localnet', 'devnet', 'testnet', 'mainnet-beta']).default('localnet'),
  SOLANA_COMMITMENT: z.enum(['processed', 'confirmed', 'finalized']).default('confirmed'),
  LOCAL_LEDGER_PORT: port.default(8899),
  LOCAL_LEDGER_SLOT_MS: millis.default(400),
  /** The CYXWIZ SPL mint; required with SOLANA_RPC_URL (the local ledger creates its own). */
  CYXWIZ_MINT: optionalUrl,
  /** Wallet receiving the platform's share (its token account for the mint). */
  PLATFORM_TREASURY: optionalUrl,
  /** Solana CLI keypair file of the escrow authority, or the keypair itself as a JSON array in *_SECRET. */
  ESCROW_AUTHORITY_KEYPAIR: optionalUrl,
  ESCROW_AUTHORITY_SECRET: optionalUrl,
  /** The server's payer account, for jobs submitted without an escrow transaction (demos, the local ledger). */
  PAYER_KEYPAIR: optionalUrl,
  PAYER_SECRET: optionalUrl,
  /**
   * `true` lets the server's payer account pay on mainnet-beta: it then pays for anyone's job or reservation that
   * brings no escrow transaction or allowance of its own (a closed network of trusted users only).
   */
  SERVER_PAYER_ON_MAINNET: z.enum(['true', 'false']).default('false'),
  /** One settlement activity attempt waits this long for a confirmation before Temporal retries it. */
  CHAIN_CONFIRM_TIMEOUT_MS: millis.default(30_000),
  /** Priority fee of settlement transactions (micro-lamports per compute unit); 0 = none. */
  SOLANA_PRIORITY_FEE_MICROLAMPORTS: whole(0, 10_000_000).default(0),
  /** The ledger-vs-chain reconciliation runs this often. */
  RECONCILE_INTERVAL_S: seconds.default(300),
});

export type Env = z.infer<typeof schema>;

export interface Config {
  readonly dataDir: string;
  readonly database: { readonly url?: string; readonly embeddedPort: number };
  readonly temporal: {
    readonly address?: string;
    readonly namespace: string;
    readonly taskQueue: string;
    /** TLS to the frontend, with the PEM files given (client certificate and key, server CA) and an API key. */
    readonly tls: boolean;
    readonly tlsCert?: string;
    readonly tlsKey?: string;
    readonly tlsCa?: string;
    readonly tlsServerName?: string;
    readonly apiKey?: string;
    readonly cli?: string;
    readonly port: number;
    readonly uiPort: number;
  };
  readonly grpc: { readonly host: string; readonly port: number };
  readonly rest: { readonly host: string; readonly port: number; readonly operatorToken?: string };
  readonly logLevel: Env['LOG_LEVEL'];
  readonly jobs: {
    readonly heartbeatTimeoutMs: number;
    readonly maxAttempts: number;
    readonly maxRuntimeMs: number;
    readonly requeueIntervalMs: number;
    readonly progressSignalIntervalMs: number;
    readonly unreportedEndGraceMs: number;
    /** SubmitJob calls per caller per minute; 0 = no limit. */
    readonly submitsPerMinute: number;
  };
  readonly nodes: {
    readonly assignTimeoutMs: number;
    readonly assignPortOffset: number;
    readonly offlineAfterMs: number;
    readonly heartbeatFlushMs: number;
    readonly metricsSampleMs: number;
    readonly metricsRetentionMs: number;
    /** New node records per caller per minute; 0 = no limit. */
    readonly newNodesPerMinute: number;
  };
  readonly p2p: { readonly secret: string; readonly tokenTtlS: number };
  /** HS256 secret users' bearer tokens are checked with; '' = no authentication. */
  readonly authJwtSecret: string;
  /** Whether an expired token is refused on the Engine's calls (never on a node's). */
  readonly authCheckExpiry: boolean;
  /** Whether ReserveNode's user_wallet must be the signed-in user's (with auth on). */
  readonly authBindWallet: boolean;
  readonly reservations: {
    readonly earlyRelease: 'full' | 'prorated';
    readonly engineTimeoutMs: number;
    readonly nodeTimeoutMs: number;
    readonly escrowWaitMs: number;
    readonly releaseWaitMs: number;
    readonly minuteMs: number;
  };
  readonly payments: { readonly platformFeeBps: number; readonly tokenDecimals: number };
  readonly chain: {
    readonly rpcUrl?: string;
    readonly cluster: Env['SOLANA_CLUSTER'];
    readonly commitment: Env['SOLANA_COMMITMENT'];
    readonly localLedgerPort: number;
    readonly localLedgerSlotMs: number;
    readonly mint?: string;
    readonly treasury?: string;
    readonly escrowAuthority: { readonly file?: string; readonly inline?: string };
    readonly payer: { readonly file?: string; readonly inline?: string };
    readonly confirmTimeoutMs: number;
    /** Micro-lamports per compute unit of settlement transactions; 0 = no priority fee. */
    readonly priorityFeeMicroLamports: number;
    readonly reconcileIntervalMs: number;
  };
}

/** Thrown when the environment does not parse; lists every bad variable. */
export class ConfigError extends Error {
  constructor(readonly issues: string[]) {
    super(`invalid configuration:\n  ${issues.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/**
 * Parses the environment once into a frozen config. The only place that reads `process.env`.
 * @throws ConfigError naming each invalid variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // A variable set to nothing (`FOO=` in an .env file or a compose file) is unset: its default applies. Not one
  // of BLANK_REFUSED, which is refused (but AUTH_JWT_SECRET= is its default all the same: authentication off).
  const kept = ([k, v]: [string, string | undefined]) =>
    typeof v === 'string' && (v.trim() !== '' || (BLANK_REFUSED.has(k) && !(k === 'AUTH_JWT_SECRET' && v === '')));
  const given = Object.fromEntries(Object.entries(env).filter(kept));
  const parsed = schema.safeParse(given);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`));
  }
  const e = parsed.data;
  if ((e.PAYER_KEYPAIR || e.PAYER_SECRET) && e.SOLANA_CLUSTER === 'mainnet-beta' && e.SERVER_PAYER_ON_MAINNET !== 'true') {
    throw new ConfigError([
      "PAYER_KEYPAIR, PAYER_SECRET: on mainnet-beta the server's payer would pay for anyone's unfunded job or reservation (a node's owner could have it pay their own node); leave it unset, or set SERVER_PAYER_ON_MAINNET=true for a closed network",
    ]);
  }
  if (e.TEMPORAL_TLS === 'false' && (e.TEMPORAL_API_KEY || e.TEMPORAL_TLS_CERT || e.TEMPORAL_TLS_CA)) {
    // Dropping them would connect in the clear (an API key sent unencrypted, or refused by the cluster).
    throw new ConfigError(['TEMPORAL_TLS: false, yet TEMPORAL_API_KEY, TEMPORAL_TLS_CERT or TEMPORAL_TLS_CA is set (they need TLS); unset one or the other']);
  }
  if (Boolean(e.TEMPORAL_TLS_CERT) !== Boolean(e.TEMPORAL_TLS_KEY)) {
    throw new ConfigError(['TEMPORAL_TLS_CERT, TEMPORAL_TLS_KEY: a client certificate needs its key, and the key its certificate']);
  }
  if (e.SOLANA_RPC_URL && e.SOLANA_COMMITMENT === 'processed') {
    // A processed block may be on a fork that is dropped: a leg counted paid there never moved, and an expiry
    // judged there could sign a second transaction while the first still lands.
    throw new ConfigError(['SOLANA_COMMITMENT: processed is for the local ledger only; use confirmed or finalized with SOLANA_RPC_URL']);
  }
  return deepFreeze({
    dataDir: path.resolve(e.DATA_DIR),
    database: { url: e.DATABASE_URL, embeddedPort: e.EMBEDDED_PG_PORT },
    temporal: {
      address: e.TEMPORAL_ADDRESS,
      namespace: e.TEMPORAL_NAMESPACE,
      taskQueue: e.TEMPORAL_TASK_QUEUE,
      tls: e.TEMPORAL_TLS ? e.TEMPORAL_TLS === 'true' : Boolean(e.TEMPORAL_TLS_CERT || e.TEMPORAL_TLS_CA || e.TEMPORAL_API_KEY),
      tlsCert: e.TEMPORAL_TLS_CERT,
      tlsKey: e.TEMPORAL_TLS_KEY,
      tlsCa: e.TEMPORAL_TLS_CA,
      tlsServerName: e.TEMPORAL_TLS_SERVER_NAME,
      apiKey: e.TEMPORAL_API_KEY,
      cli: e.TEMPORAL_CLI,
      port: e.TEMPORAL_PORT,
      uiPort: e.TEMPORAL_UI_PORT,
    },
    grpc: { host: e.GRPC_HOST, port: e.GRPC_PORT },
    rest: { host: e.REST_HOST, port: e.REST_PORT, operatorToken: e.REST_OPERATOR_TOKEN },
    logLevel: e.LOG_LEVEL,
    jobs: {
      heartbeatTimeoutMs: e.JOB_HEARTBEAT_TIMEOUT_S * 1000,
      maxAttempts: e.JOB_MAX_ATTEMPTS,
      maxRuntimeMs: e.JOB_MAX_RUNTIME_S * 1000,
      requeueIntervalMs: e.JOB_REQUEUE_INTERVAL_S * 1000,
      progressSignalIntervalMs: e.JOB_PROGRESS_SIGNAL_INTERVAL_S * 1000,
      unreportedEndGraceMs: e.JOB_UNREPORTED_END_GRACE_S * 1000,
      submitsPerMinute: e.SUBMIT_JOBS_PER_MINUTE,
    },
    nodes: {
      assignTimeoutMs: e.NODE_ASSIGN_TIMEOUT_MS,
      assignPortOffset: e.NODE_ASSIGN_PORT_OFFSET,
      offlineAfterMs: e.NODE_OFFLINE_AFTER_S * 1000,
      heartbeatFlushMs: e.HEARTBEAT_FLUSH_MS,
      metricsSampleMs: e.NODE_METRICS_SAMPLE_S * 1000,
      metricsRetentionMs: e.NODE_METRICS_RETENTION_H * 3600 * 1000,
      newNodesPerMinute: e.NEW_NODES_PER_MINUTE,
    },
    p2p: { secret: e.P2P_JWT_SECRET, tokenTtlS: e.P2P_TOKEN_TTL_S },
    authJwtSecret: e.AUTH_JWT_SECRET,
    authCheckExpiry: e.AUTH_CHECK_EXPIRY === 'true',
    authBindWallet: e.AUTH_BIND_WALLET === 'true',
    reservations: {
      earlyRelease: e.RESERVATION_EARLY_RELEASE,
      engineTimeoutMs: e.RESERVATION_ENGINE_TIMEOUT_S * 1000,
      nodeTimeoutMs: e.RESERVATION_NODE_TIMEOUT_S * 1000,
      escrowWaitMs: e.RESERVATION_ESCROW_WAIT_MS,
      releaseWaitMs: e.RESERVATION_RELEASE_WAIT_MS,
      minuteMs: e.RESERVATION_MINUTE_MS,
    },
    payments: { platformFeeBps: e.PLATFORM_FEE_BPS, tokenDecimals: e.TOKEN_DECIMALS },
    chain: {
      rpcUrl: e.SOLANA_RPC_URL,
      cluster: e.SOLANA_CLUSTER,
      commitment: e.SOLANA_COMMITMENT,
      localLedgerPort: e.LOCAL_LEDGER_PORT,
      localLedgerSlotMs: e.LOCAL_LEDGER_SLOT_MS,
      mint: e.CYXWIZ_MINT,
      treasury: e.PLATFORM_TREASURY,
      escrowAuthority: { file: e.ESCROW_AUTHORITY_KEYPAIR, inline: e.ESCROW_AUTHORITY_SECRET },
      payer: { file: e.PAYER_KEYPAIR, inline: e.PAYER_SECRET },
      confirmTimeoutMs: e.CHAIN_CONFIRM_TIMEOUT_MS,
      priorityFeeMicroLamports: e.SOLANA_PRIORITY_FEE_MICROLAMPORTS,
      reconcileIntervalMs: e.RECONCILE_INTERVAL_S * 1000,
    },
  });
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
