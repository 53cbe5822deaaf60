import type * as grpc from '@grpc/grpc-js';
import { protocolClient } from '../support/grpc-clients';
import { testChain, type TestChain } from './chain';
import { SimNode, type SimNodeOptions } from '../support/sim-node';
import { eventually, freeNodePort, type RunningSystem } from '../support/system';

/** StatusCode (common.proto). */
export const S = { UNKNOWN: 0, SUCCESS: 1, ERROR: 2, PENDING: 3, IN_PROGRESS: 4, COMPLETED: 5, FAILED: 6, CANCELLED: 7 } as const;
export const JOB_TYPE_TRAINING = 1;
export const DEVICE_CPU = 1;
export const DEVICE_CUDA = 2;
export const GiB = 2 ** 30;

export type ProtocolClient = ReturnType<typeof protocolClient>;

/** A JobConfig as the Engine's SubmitSimpleJob fills it (CUDA, 1 GiB, 10 epochs), with 1.5 tokens escrowed. */
export function jobConfig(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    job_type: JOB_TYPE_TRAINING,
    priority: 1,
    model_definition: '{"layers":[]}',
    hyperparameters: { lr: '0.001' },
    dataset_uri: 'remote://engine/mnist',
    batch_size: 32,
    epochs: 10,
    required_device: DEVICE_CUDA,
    estimated_memory: String(GiB),
    estimated_duration: '600',
    payment_amount: 1.5,
    ...overrides,
  };
}

/** A job no simulated node can take: it stays queued. */
export const unfittable = (overrides: Record<string, unknown> = {}) =>
  jobConfig({ required_device: DEVICE_CUDA, estimated_memory: String(1024 * GiB), ...overrides });

export async function submitJob(engine: ProtocolClient, config: Record<string, unknown>): Promise<string> {
  const res = await engine.call('SubmitJob', { config });
  if (res.status !== S.SUCCESS || !res.job_id) throw new Error(`SubmitJob refused: ${JSON.stringify(res)}`);
  return res.job_id as string;
}

export async function jobStatus(engine: ProtocolClient, jobId: string): Promise<any> {
  return engine.call('GetJobStatus', { job_id: jobId });
}

/** Polls GetJobStatus as the Engine does until a node assignment shows up. */
export async function waitForAssignment(engine: ProtocolClient, jobId: string, timeoutMs = 20_000): Promise<any> {
  return eventually(
    `a node assignment for ${jobId}`,
    async () => {
      const res = await jobStatus(engine, jobId);
      return res.node_assignment?.node_id ? res : undefined;
    },
    timeoutMs,
  );
}

/** Polls GetJobStatus until `predicate` holds for its JobStatus. */
export async function waitForStatus(engine: ProtocolClient, jobId: string, predicate: (status: any) => boolean, what: string, timeoutMs = 20_000): Promise<any> {
  return eventually(
    `${what} (job ${jobId})`,
    async () => {
      const res = await jobStatus(engine, jobId);
      return predicate(res.status) ? res : undefined;
    },
    timeoutMs,
  );
}

export async function restGet<T = any>(sys: RunningSystem, path: string): Promise<{ status: number; body: T }> {
  const res = await fetch(`${sys.restUrl}${path}`, { signal: AbortSignal.timeout(10_000) });
  return { status: res.status, body: (await res.json()) as T };
}

export async function restPost<T = any>(sys: RunningSystem, path: string, body: unknown = {}): Promise<{ status: number; body: T }> {
  const res = await fetch(`${sys.restUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  return { status: res.status, body: (await res.json()) as T };
}

/** One money leg as REST `GET /api/jobs/:id/payments` shows it. */
export interface PaymentLeg {
  leg: 'escrow' | 'release_node' | 'release_platform' | 'refund';
  amount: string;
  state: 'pending' | 'owed' | 'sent' | 'confirmed' | 'failed';
  fromAccount: string;
  toAccount: string;
  txRef: string | null;
  [field: string]: unknown;
}

/** The job's legs from REST `GET /api/jobs/:id/payments`, by leg (each leg appears at most once). */
export async function paymentLegs(sys: RunningSystem, jobId: string): Promise<Partial<Record<PaymentLeg['leg'], PaymentLeg>>> {
  const { status, body } = await restGet<{ jobId: string; payments: PaymentLeg[] }>(sys, `/api/jobs/${jobId}/payments`);
  if (status !== 200) throw new Error(`GET /api/jobs/${jobId}/payments answered ${status}: ${JSON.stringify(body)}`);
  const byLeg: Partial<Record<PaymentLeg['leg'], PaymentLeg>> = {};
  for (const p of body.payments) {
    if (byLeg[p.leg]) throw new Error(`job ${jobId} has two ${p.leg} legs`);
    byLeg[p.leg] = p;
  }
  return byLeg;
}

/** Reads a server stream to its end. */
export function collect(stream: grpc.ClientReadableStream<any>): { messages: any[]; done: Promise<{ error?: grpc.ServiceError }> } {
  const messages: any[] = [];
  stream.on('data', (m) => messages.push(m));
  const done = new Promise<{ error?: grpc.ServiceError }>((resolve) => {
    stream.on('end', () => resolve({}));
    stream.on('error', (error: grpc.ServiceError) => resolve({ error }));
  });
  return { messages, done };
}

/** `promise`'s value, or `onTimeout` after `ms` (the timer never outlives the race). */
export async function within<T, U>(promise: Promise<T>, ms: number, onTimeout: U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<U>((resolve) => (timer = setTimeout(() => resolve(onTimeout), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts a simulated node against the system on a free port; stopped by `nodes.stopAll()`. A node given no wallet
 * gets a fresh one whose token account is open, as an operator's is (else its payments would be owed).
 */
export function nodePool(sys: () => RunningSystem) {
  const started: SimNode[] = [];
  let chain: TestChain | undefined;
  return {
    async start(opts: Partial<SimNodeOptions> = {}): Promise<SimNode> {
      const node = new SimNode({ central: sys().grpcAddress, port: await freeNodePort(), heartbeatMs: 1000, ...opts });
      if (opts.wallet === undefined) await (chain ??= testChain()).openTokenAccount(node.wallet);
      started.push(node);
      return node.start();
    },
    async stopAll(): Promise<void> {
      await Promise.all(started.splice(0).map((n) => n.stop().catch(() => undefined)));
    },
  };
}

/** The job's ledger rows, straight from the system's database. */
export async function ledger(sys: RunningSystem, jobId: string) {
  return sys.query<{ leg: string; amount: string; from_account: string; to_account: string; tx_ref: string }>(
    'SELECT leg, amount::text AS amount, from_account, to_account, tx_ref FROM payments WHERE job_id = $1 ORDER BY id',
    [jobId],
  );
}

export { eventually };
