/**
 * The job's life, as the workflow drives it and Postgres records it.
 *
 *   pending ─▶ queued ─▶ assigned ─▶ running ─▶ completed
 *      │          ▲  │        │          │
 *      │          └──┴────────┴──────────┘  node refused, unreachable or lost: back to the queue
 *      └──────────┴─▶ failed | cancelled    (attempts exhausted, node-reported failure, user cancel)
 */
export const JOB_PHASES = ['pending', 'queued', 'assigned', 'running', 'completed', 'failed', 'cancelled'] as const;
export type JobPhase = (typeof JOB_PHASES)[number];

export const TERMINAL_PHASES: readonly JobPhase[] = ['completed', 'failed', 'cancelled'];
export const ACTIVE_ON_NODE_PHASES: readonly JobPhase[] = ['assigned', 'running'];

export function isTerminal(phase: JobPhase): boolean {
  return TERMINAL_PHASES.includes(phase);
}

/** Protocol `StatusCode` values (common.proto). */
export const StatusCode = {
  UNKNOWN: 0,
  SUCCESS: 1,
  ERROR: 2,
  PENDING: 3,
  IN_PROGRESS: 4,
  COMPLETED: 5,
  FAILED: 6,
  CANCELLED: 7,
} as const;
export type StatusCodeValue = (typeof StatusCode)[keyof typeof StatusCode];

/**
 * The `JobStatus.status` a client sees for a phase. A finished job reports STATUS_SUCCESS: the shipping
 * Engine treats SUCCESS, FAILED and CANCELLED as finished and would poll a STATUS_COMPLETED job forever.
 */
export function phaseToStatusCode(phase: JobPhase): StatusCodeValue {
  switch (phase) {
    case 'pending':
    case 'queued':
      return StatusCode.PENDING;
    case 'assigned':
    case 'running':
      return StatusCode.IN_PROGRESS;
    case 'completed':
      return StatusCode.SUCCESS;
    case 'failed':
      return StatusCode.FAILED;
    case 'cancelled':
      return StatusCode.CANCELLED;
  }
}

/** The phases a `ListJobs.filter_status` selects; undefined for STATUS_UNKNOWN (no filter). */
export function statusCodeToPhases(code: number): JobPhase[] | undefined {
  switch (code) {
    case StatusCode.UNKNOWN:
      return undefined;
    case StatusCode.PENDING:
      return ['pending', 'queued'];
    case StatusCode.IN_PROGRESS:
      return ['assigned', 'running'];
    case StatusCode.SUCCESS:
    case StatusCode.COMPLETED:
      return ['completed'];
    case StatusCode.FAILED:
    case StatusCode.ERROR:
      return ['failed'];
    case StatusCode.CANCELLED:
      return ['cancelled'];
    default:
      return [];
  }
}

export const JOB_TYPES = ['UNKNOWN', 'TRAINING', 'INFERENCE', 'EVALUATION', 'PREPROCESSING'] as const;
export type JobType = (typeof JOB_TYPES)[number];

export const DEVICE_TYPES = ['UNKNOWN', 'CPU', 'CUDA', 'OPENCL', 'METAL', 'VULKAN'] as const;
export type DeviceType = (typeof DEVICE_TYPES)[number];

export const PRIORITIES = ['LOW', 'NORMAL', 'HIGH', 'CRITICAL'] as const;
export type Priority = (typeof PRIORITIES)[number];

/**
 * A validated job, as services, workflows and activities pass it. JSON-safe: the payment is a decimal
 * string of smallest units (Temporal's JSON payload converter has no bigint).
 */
export interface JobSpec {
  jobId: string;
  jobType: JobType;
  priority: Priority;
  modelDefinition: string;
  hyperparameters: Record<string, string>;
  datasetUri: string;
  batchSize: number;
  epochs: number;
  requiredDevice: DeviceType;
  /** Bytes of device memory the job needs; 0 when unspecified. */
  estimatedMemory: number;
  /** Seconds; 0 when unspecified. */
  estimatedDuration: number;
  /** Escrow in the token's smallest units, as a decimal string. */
  paymentUnits: string;
  /** The payer's wallet; refunds go here. Empty when the server's configured payer pays. */
  paymentAddress: string;
  escrowTxHash: string;
  reservationDurationMinutes: number;
}

/** Who caused a state change, as `job_events.actor` records it. */
export type Actor = 'client' | 'workflow' | `node:${string}`;

/**
 * Lists (jobs, a wallet's ledger legs) count their rows up to this many, and page no deeper: a count or an OFFSET
 * over every job (or every leg of the treasury) on each request would grow with the ledger without end.
 */
export const LIST_DEPTH = 10_000;
