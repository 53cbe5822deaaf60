import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { Keypair } from '@solana/web3.js';
import { Client as TemporalClient, Connection, WorkflowIdConflictPolicy, WorkflowIdReusePolicy } from '@temporalio/client';
import { getFreePort } from '../../src/infra/process';
import { loadProtocol } from '../../src/protocol/load';
import { JobSearchAttributes as SA } from '../../src/workflows/search-attributes';
import { serveCommands } from '../lib/proc';
import { twinAccepted, twinComplete, twinProgress, type TwinJobInput } from '../twin/messages';

/**
 * The e2e load driver: plays Server Nodes (register, heartbeat every 10 s, serve AssignJob on port + 3,
 * report accepted → 2 × progress → completion) and Engines (SubmitJob, then watch the job with
 * StreamJobUpdates until it shows a node), entirely over gRPC against the real API. The same process drives
 * the bare Temporal twin with a Temporal client. Commanded over IPC by bench/e2e.ts.
 */

const GiB = 2 ** 30;
const S = { SUCCESS: 1, PENDING: 3, IN_PROGRESS: 4 } as const;
type Callback = (err: grpc.ServiceError | null, res: any) => void;
type AnyClient = grpc.Client & Record<string, (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => void>;

const proto = loadProtocol();

/** A few connections per service, used round robin (one HTTP/2 connection would serialise the driver). */
function pool(service: 'JobService' | 'NodeService', address: string, size: number) {
  const clients = Array.from({ length: size }, () => new proto[service](address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as AnyClient);
  let next = 0;
  const take = () => clients[next++ % clients.length];
  return {
    call<T = any>(method: string, request: unknown, deadlineMs = 60_000): Promise<T> {
      return new Promise((resolve, reject) =>
        take()[method](request, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, res) => (err ? reject(err) : resolve(res as T))),
      );
    },
    stream(method: string, request: unknown): grpc.ClientReadableStream<any> {
      return (take() as unknown as Record<string, (req: unknown) => grpc.ClientReadableStream<any>>)[method](request);
    },
    close: () => clients.forEach((c) => c.close()),
  };
}
type Pool = ReturnType<typeof pool>;

interface SimNode {
  nodeId: string;
  port: number;
  tag: string;
  wallet: string;
  timer?: NodeJS.Timeout;
  /** Resolvers waiting for this node's next acknowledged heartbeat. */
  beatWaiters: ((at: number) => void)[];
  lastBeatOkAt: number;
}

const state: {
  central?: string;
  /** The wallet every simulated node registers (see startNodes). */
  wallet?: string;
  nodeApi?: Pool;
  jobApi?: Pool;
  server?: grpc.Server;
  nodes: Map<string, SimNode>;
  /** AssignJob arrival time per job id. */
  assignedAt: Map<string, number>;
  temporal?: { connection: Connection; client: TemporalClient };
} = { nodes: new Map(), assignedAt: new Map() };

function assignServer(): grpc.Server {
  if (state.server) return state.server;
  const server = new grpc.Server();
  // One server bound on every node's port + 3; the request's node_id says which node it is for.
  server.addService(proto.NodeService.service, {
    AssignJob: (call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => {
      const jobId = call.request.job?.job_id as string;
      state.assignedAt.set(jobId, Date.now());
      cb(null, { status: S.SUCCESS, job_id: jobId, accepted: true, estimated_start_time: 'waiting_for_p2p' });
    },
  });
  state.server = server;
  return server;
}

async function heartbeat(node: SimNode): Promise<void> {
  const res = await state.nodeApi!.call('Heartbeat', {
    node_id: node.nodeId,
    current_status: { node_id: node.nodeId, is_online: true, ram_available: String(16 * GiB), ram_total: String(64 * GiB) },
    active_jobs: [],
  }, 10_000);
  if (res.status === S.SUCCESS && res.keep_alive) {
    node.lastBeatOkAt = Date.now();
    for (const w of node.beatWaiters.splice(0)) w(node.lastBeatOkAt);
  }
}

function startBeating(node: SimNode, everyMs: number): void {
  stopBeating(node);
  // Spread the first beats over the interval, as independent nodes would be.
  const first = setTimeout(() => {
    void heartbeat(node).catch(() => undefined);
    node.timer = setInterval(() => void heartbeat(node).catch(() => undefined), everyMs);
  }, Math.floor(Math.random() * everyMs));
  node.timer = first;
}

function stopBeating(node: SimNode): void {
  if (node.timer) {
    clearTimeout(node.timer);
    clearInterval(node.timer);
  }
  node.timer = undefined;
}

/**
 * Registers `count` simulated nodes with `gpus` CUDA devices of `vramGiB` each (capacity = gpus), all paid to
 * `wallet` (one with a token account for the mint, as a farm's machines share one; a fresh wallet would leave
 * their payments owed), else each to a fresh wallet.
 */
async function startNodes(msg: { central: string; count: number; gpus: number; vramGiB: number; heartbeatMs: number; tag: string; wallet?: string }) {
  state.central ??= msg.central;
  state.wallet ??= msg.wallet;
  state.nodeApi ??= pool('NodeService', msg.central, 4);
  state.jobApi ??= pool('JobService', msg.central, 4);
  const server = assignServer();
  const started: string[] = [];
  for (let i = 0; i < msg.count; i++) {
    let port = 0;
    for (;;) {
      const assignPort = await getFreePort();
      if (assignPort > 1027) {
        port = assignPort - 3;
        break;
      }
    }
    await new Promise<number>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${port + 3}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    const wallet = state.wallet ?? Keypair.generate().publicKey.toBase58();
    const vram = String(msg.vramGiB * GiB);
    const res = await state.nodeApi.call('RegisterNode', {
      info: {
        // Its own id, as a node that registered before sends: a node naming none is known by its wallet, and
        // these all share one.
        node_id: randomUUID(),
        name: `${msg.tag}-${i}`,
        cpu_cores: 16,
        ram_total: String(64 * GiB),
        ram_available: String(32 * GiB),
        ip_address: '127.0.0.1',
        port,
        region: 'local',
        wallet_address: wallet,
        reputation_score: 0.5,
        is_online: true,
        devices: Array.from({ length: msg.gpus }, () => ({
          device_type: 2,
          device_name: 'Sim GPU',
          memory_total: vram,
          memory_available: vram,
          vram_total: vram,
          vram_available: vram,
        })),
      },
      authentication_token: 'jwt',
    });
    if (res.status !== S.SUCCESS) throw new Error(`RegisterNode failed: ${JSON.stringify(res)}`);
    const node: SimNode = { nodeId: res.node_id, port, tag: msg.tag, wallet, beatWaiters: [], lastBeatOkAt: 0 };
    state.nodes.set(node.nodeId, node);
    startBeating(node, msg.heartbeatMs);
    started.push(node.nodeId);
  }
  return { nodeIds: started };
}

function jobConfig(jobId: string, memoryGiB: number) {
  return {
    job_id: jobId,
    job_type: 1,
    priority: 1,
    model_definition: '{"layers":[]}',
    hyperparameters: { lr: '0.001' },
    dataset_uri: 'remote://engine/mnist',
    batch_size: 32,
    epochs: 10,
    required_device: 2,
    estimated_memory: String(memoryGiB * GiB),
    estimated_duration: '600',
    payment_amount: 1.5,
  };
}

/** Opens StreamJobUpdates as the Engine does and resolves once the job shows a node (time, node id). */
function watchForAssignment(jobId: string, timeoutMs: number): { assigned: Promise<{ at: number; nodeId: string }>; close: () => void } {
  const stream = state.jobApi!.stream('StreamJobUpdates', { job_id: jobId });
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    stream.cancel();
  };
  const assigned = new Promise<{ at: number; nodeId: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no assignment of ${jobId} within ${timeoutMs} ms`)), timeoutMs);
    stream.on('data', (m: any) => {
      if (m.status?.status === S.IN_PROGRESS && m.status.current_node_id) {
        clearTimeout(timer);
        resolve({ at: Date.now(), nodeId: m.status.current_node_id });
      } else if (m.status?.status !== S.PENDING && m.status?.status !== S.IN_PROGRESS) {
        clearTimeout(timer);
        reject(new Error(`job ${jobId} ended before assignment: ${JSON.stringify(m.status)}`));
      }
    });
    stream.on('error', (err: grpc.ServiceError) => {
      if (err.code === grpc.status.CANCELLED) return;
      clearTimeout(timer);
      reject(err);
    });
  });
  assigned.catch(() => undefined);
  return { assigned, close };
}

/** One job's moments as the driver saw them (bench/e2e.ts reads them over IPC). */
export interface JobTiming {
  jobId: string;
  /** When the job was due (open loop) or submitted (closed loop), epoch ms. */
  scheduledAt: number;
  /** The Engine saw the assignment. */
  assignedAt: number;
  /** The node received AssignJob (system only). */
  nodeAssignAt?: number;
  doneAt: number;
}

/** One whole job through the real system, as an Engine and the node holding the job drive it. */
async function systemJob(scheduledAt: number, memoryGiB = 1): Promise<JobTiming> {
  const jobId = `bench-${randomUUID()}`;
  const jobs = state.jobApi!;
  const nodeApi = state.nodeApi!;
  const submitted = await jobs.call('SubmitJob', { config: jobConfig(jobId, memoryGiB) });
  if (submitted.status !== S.SUCCESS) throw new Error(`SubmitJob refused: ${JSON.stringify(submitted.error)}`);
  const watch = watchForAssignment(jobId, 60_000);
  try {
    const { at: assignedAt, nodeId } = await watch.assigned;
    const accepted = await nodeApi.call('NotifyJobAccepted', {
      node_id: nodeId,
      job_id: jobId,
      engine_address: 'direct_p2p',
      accepted_at: (BigInt(Date.now()) * 1_000_000n).toString(),
      node_endpoint: '0.0.0.0:50052',
    });
    if (accepted.status !== S.SUCCESS) throw new Error(`NotifyJobAccepted refused: ${JSON.stringify(accepted.error)}`);
    for (const [progress, epoch] of [[0.5, 5], [1, 10]] as const) {
      const r = await nodeApi.call('ReportProgress', {
        node_id: nodeId,
        job_id: jobId,
        status: { job_id: jobId, status: 4, progress, current_epoch: epoch, metrics: { loss: 1 - progress } },
      });
      if (r.status !== S.SUCCESS) throw new Error(`ReportProgress refused: ${JSON.stringify(r.error)}`);
    }
    const done = await nodeApi.call('ReportCompletion', {
      node_id: nodeId,
      job_id: jobId,
      result: { job_id: jobId, status: 1, final_metrics: { loss: 0.01 }, total_compute_time: '42' },
    }, 120_000);
    if (done.status !== S.SUCCESS || !done.payment_released) throw new Error(`ReportCompletion: ${JSON.stringify(done)}`);
    return { jobId, scheduledAt, assignedAt, nodeAssignAt: state.assignedAt.get(jobId), doneAt: Date.now() };
  } finally {
    watch.close();
    state.assignedAt.delete(jobId);
  }
}

async function temporal(address: string) {
  if (!state.temporal) {
    const connection = await Connection.connect({ address });
    state.temporal = { connection, client: new TemporalClient({ connection, namespace: 'default' }) };
  }
  return state.temporal.client;
}

/** The same job shape on the bare Temporal twin: start, accepted (returns once assigned), 1 progress signal, complete. */
async function twinJob(client: TemporalClient, taskQueue: string, scheduledAt: number): Promise<JobTiming> {
  const jobId = `twin-${randomUUID()}`;
  const input: TwinJobInput = { jobId, nodeId: 'twin-node', paymentUnits: '1500000000' };
  const handle = await client.workflow.start('twinJobWorkflow', {
    workflowId: jobId,
    taskQueue,
    args: [input],
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
    workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
    typedSearchAttributes: [
      { key: SA.status, value: 'pending' },
      { key: SA.jobType, value: 'TRAINING' },
      { key: SA.deviceType, value: 'CUDA' },
      { key: SA.submitter, value: '' },
      { key: SA.escrowState, value: 'none' },
      { key: SA.attempt, value: 0 },
    ],
    staticSummary: 'TRAINING · CUDA · 1 GiB · 1.5 CYXWIZ · 10 epochs',
    staticDetails: '**twin** of a job workflow',
  });
  await handle.executeUpdate(twinAccepted, { args: [{ nodeId: input.nodeId }] });
  const assignedAt = Date.now();
  // The system's node reports progress twice, but its API passes only the first of an attempt's reports within
  // JOB_PROGRESS_SIGNAL_INTERVAL_S (10 s) to the workflow: one signal.
  await handle.signal(twinProgress, { nodeId: input.nodeId, progress: 0.5, epoch: 5 });
  const receipt = await handle.executeUpdate(twinComplete, { args: [{ nodeId: input.nodeId }], updateId: `complete/${input.nodeId}` });
  if (!receipt.paymentReleased) throw new Error('twin: no payment');
  return { jobId, scheduledAt, assignedAt, doneAt: Date.now() };
}

interface RunCommand {
  kind: 'system' | 'twin';
  /** closed: `concurrency` jobs always in flight; open: one job every 1/rate s. */
  mode: 'closed' | 'open';
  concurrency?: number;
  rate?: number;
  startAt: number;
  measureFrom: number;
  measureTo: number;
  temporalAddress?: string;
  taskQueue?: string;
  /** Give up on in-flight jobs this long after measureTo. */
  drainMs: number;
}

async function run(msg: RunCommand) {
  const job =
    msg.kind === 'system'
      ? (t: number) => systemJob(t)
      : await (async () => {
          const client = await temporal(msg.temporalAddress!);
          return (t: number) => twinJob(client, msg.taskQueue!, t);
        })();
  await new Promise((r) => setTimeout(r, Math.max(0, msg.startAt - Date.now())));
  const timings: JobTiming[] = [];
  const errors: string[] = [];
  const inFlight = new Set<Promise<void>>();
  const launch = (scheduledAt: number) => {
    const p = job(scheduledAt).then(
      (t) => void timings.push(t),
      (err) => void errors.push(String((err as Error)?.message ?? err).slice(0, 300)),
    );
    const tracked = p.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    return tracked;
  };
  let launched = 0;
  if (msg.mode === 'closed') {
    await Promise.all(
      Array.from({ length: msg.concurrency! }, async () => {
        while (Date.now() < msg.measureTo) {
          launched += 1;
          await launch(Date.now());
        }
      }),
    );
  } else {
    const interval = 1000 / msg.rate!;
    for (let i = 0; ; i++) {
      const due = msg.startAt + i * interval;
      if (due >= msg.measureTo) break;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      launched += 1;
      void launch(due);
    }
  }
  const drainDeadline = msg.measureTo + msg.drainMs;
  while (inFlight.size > 0 && Date.now() < drainDeadline) await Promise.race([...inFlight, new Promise((r) => setTimeout(r, 200))]);
  const stuck = inFlight.size;
  return { timings, errors: errors.slice(0, 20), errorCount: errors.length, launched, stuck };
}

/**
 * Node loss: `count` victim nodes (1 GPU of 48 GiB, the only nodes that fit 40 GiB jobs) take one job each and
 * run it; then rescue nodes register; each victim goes silent right after an acknowledged heartbeat. For each
 * job: time from that last heartbeat until GetJobStatus shows another node.
 */
async function nodeLoss(msg: { count: number; heartbeatMs: number; timeoutMs: number }) {
  const jobs = state.jobApi!;
  const nodeApi = state.nodeApi!;
  const victims = (await startNodes({ central: state.central!, count: msg.count, gpus: 1, vramGiB: 48, heartbeatMs: msg.heartbeatMs, tag: 'victim' })).nodeIds;
  const jobIds = Array.from({ length: msg.count }, () => `loss-${randomUUID()}`);
  // One job at a time, each placed before the next is submitted, so each runs on its own victim.
  const holders: string[] = [];
  for (const jobId of jobIds) {
    const r = await jobs.call('SubmitJob', { config: jobConfig(jobId, 40) });
    if (r.status !== S.SUCCESS) throw new Error(`SubmitJob refused: ${JSON.stringify(r.error)}`);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const st = await jobs.call('GetJobStatus', { job_id: jobId });
      const nodeId = st.node_assignment?.node_id as string | undefined;
      if (nodeId) {
        if (!victims.includes(nodeId)) throw new Error(`job ${jobId} landed on ${nodeId}, not a victim`);
        const a = await nodeApi.call('NotifyJobAccepted', { node_id: nodeId, job_id: jobId, engine_address: 'direct_p2p', accepted_at: '0', node_endpoint: '0.0.0.0:50052' });
        if (a.status !== S.SUCCESS) throw new Error(`accepted refused: ${JSON.stringify(a.error)}`);
        await nodeApi.call('ReportProgress', { node_id: nodeId, job_id: jobId, status: { job_id: jobId, status: 4, progress: 0.1, current_epoch: 1 } });
        holders.push(nodeId);
        break;
      }
      if (Date.now() > deadline) throw new Error(`job ${jobId} was not assigned`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }
  // Somewhere to go: as many rescue nodes as victims.
  await startNodes({ central: state.central!, count: msg.count, gpus: 1, vramGiB: 48, heartbeatMs: msg.heartbeatMs, tag: 'rescue' });

  const samples = await Promise.all(
    jobIds.map(async (jobId, i) => {
      const victim = state.nodes.get(holders[i])!;
      // Go silent right after a heartbeat the server acknowledged: the full silence is measured.
      const silentAt = await new Promise<number>((resolve) => victim.beatWaiters.push(resolve));
      stopBeating(victim);
      let detachedAt: number | undefined;
      const deadline = silentAt + msg.timeoutMs;
      for (;;) {
        const s = await jobs.call('GetJobStatus', { job_id: jobId }).catch(() => undefined);
        const now = Date.now();
        const nodeId = s?.node_assignment?.node_id as string | undefined;
        if (nodeId !== victim.nodeId && detachedAt === undefined) detachedAt = now;
        if (nodeId && nodeId !== victim.nodeId) {
          return { jobId, lostNode: victim.nodeId, newNode: nodeId, silentAt, detachedS: ((detachedAt ?? now) - silentAt) / 1000, reassignedS: (now - silentAt) / 1000 };
        }
        if (now > deadline) return { jobId, lostNode: victim.nodeId, newNode: null, silentAt, detachedS: detachedAt ? (detachedAt - silentAt) / 1000 : null, reassignedS: null };
        await new Promise((r) => setTimeout(r, 100));
      }
    }),
  );
  return { samples, victims, holders };
}

serveCommands({
  startNodes,
  run,
  nodeLoss,
  async stop() {
    for (const node of state.nodes.values()) stopBeating(node);
    state.nodeApi?.close();
    state.jobApi?.close();
    await state.temporal?.connection.close().catch(() => undefined);
    await new Promise<void>((resolve) => (state.server ? state.server.tryShutdown(() => resolve()) : resolve()));
    return true;
  },
});
process.send?.({ ready: true });
