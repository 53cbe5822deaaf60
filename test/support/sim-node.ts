import { Keypair } from '@solana/web3.js';
import * as grpc from '@grpc/grpc-js';
import { loadProtocol } from '../../src/protocol/load';
import { protocolClient } from './grpc-clients';

export interface AssignedJob {
  job_id: string;
  dataset_uri: string;
  [field: string]: unknown;
}

export interface SimNodeOptions {
  /**
   * The wallet the node registers: a fresh one by default; '' registers none, as shipping nodes do (they are
   * then owed their payments until they register one).
   */
  wallet?: string;
  central: string;
  /** The P2P port the node registers (AssignJob is served on port + 3, as on shipping nodes). */
  port: number;
  name?: string;
  nodeId?: string;
  device?: 'CUDA' | 'CPU';
  vramBytes?: number;
  heartbeatMs?: number;
  /** Answer to AssignJob: accept (default), refuse with a code, or never answer. */
  onAssign?: (job: AssignedJob) => 'accept' | { refuse: number } | 'hang';
  /** Options of the node's channel to the central server (e.g. a faster reconnect backoff). */
  channelOptions?: grpc.ChannelOptions;
}

/** Per-call options of the node's reports (a longer deadline for calls that wait on a settlement). */
export interface ReportOptions {
  deadlineMs?: number;
}

/** Outcome counters of the node's heartbeats. */
export interface HeartbeatStats {
  ok: number;
  failed: number;
  /** Time of the last successful heartbeat (ms since epoch). */
  lastOkAt: number;
  lastError?: string;
}

const DEVICE = { CPU: 1, CUDA: 2 } as const;

/**
 * A simulated CyxWiz Server Node: registers like the shipping daemon, heartbeats on a timer, serves
 * NodeService.AssignJob on its own port + 3, and reports on its jobs through the central server's RPCs.
 */
export class SimNode {
  nodeId = '';
  readonly assigned: AssignedJob[] = [];
  readonly cancelOrders = new Set<string>();
  /** Every AssignJob request received, accepted or not. */
  readonly assignRequests: { node_id: string; job: AssignedJob; at: number }[] = [];
  readonly beats: HeartbeatStats = { ok: 0, failed: 0, lastOkAt: 0 };
  private server = new grpc.Server();
  private timer?: NodeJS.Timeout;
  readonly node: ReturnType<typeof protocolClient>;
  readonly jobStatus: ReturnType<typeof protocolClient>;

  /** The wallet this node registers ('' for none). */
  wallet: string;

  constructor(private readonly opts: SimNodeOptions) {
    this.wallet = opts.wallet ?? Keypair.generate().publicKey.toBase58();
    this.node = protocolClient('NodeService', opts.central, opts.channelOptions);
    this.jobStatus = protocolClient('JobStatusService', opts.central, opts.channelOptions);
  }

  /** The P2P port the node registered (its endpoint is 127.0.0.1:port). */
  get port(): number {
    return this.opts.port;
  }

  /** Starts serving AssignJob, registers, and heartbeats. */
  async start(): Promise<this> {
    const { NodeService } = loadProtocol();
    this.server.addService(NodeService.service, {
      AssignJob: (call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => {
        const job = call.request.job as AssignedJob;
        this.assignRequests.push({ node_id: call.request.node_id, job, at: Date.now() });
        const answer = this.opts.onAssign?.(job) ?? 'accept';
        if (answer === 'hang') return;
        if (answer === 'accept') {
          this.assigned.push(job);
          cb(null, { status: 1, job_id: job.job_id, accepted: true, estimated_start_time: 'waiting_for_p2p' });
        } else {
          cb(null, { status: 6, job_id: job.job_id, accepted: false, error: { code: answer.refuse, message: 'busy' } });
        }
      },
    });
    await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`127.0.0.1:${this.opts.port + 3}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    await this.register();
    this.resumeHeartbeats();
    return this;
  }

  /**
   * Registers (again) with the node's current `wallet`. `claimId: false` leaves node_id empty, so the server
   * must recognise the node by its wallet or endpoint (ip:port).
   */
  async register(opts: { claimId?: boolean } = {}): Promise<string> {
    const res = await this.node.call('RegisterNode', {
      info: {
        node_id: opts.claimId === false ? '' : this.nodeId || this.opts.nodeId || '',
        name: this.opts.name ?? `sim-${this.opts.port}`,
        cpu_cores: 8,
        ram_total: String(32 * 2 ** 30),
        ram_available: String(16 * 2 ** 30),
        ip_address: '127.0.0.1',
        port: this.opts.port,
        region: 'local',
        wallet_address: this.wallet,
        reputation_score: 0.5,
        is_online: true,
        devices: [
          {
            device_type: DEVICE[this.opts.device ?? 'CUDA'],
            device_name: 'Sim GPU',
            memory_total: String(this.opts.vramBytes ?? 8 * 2 ** 30),
            memory_available: String(this.opts.vramBytes ?? 8 * 2 ** 30),
            vram_total: String(this.opts.vramBytes ?? 8 * 2 ** 30),
            vram_available: String(this.opts.vramBytes ?? 8 * 2 ** 30),
          },
        ],
      },
      authentication_token: 'jwt',
    });
    if (res.status !== 1) throw new Error(`RegisterNode failed: ${JSON.stringify(res.error)}`);
    this.nodeId = res.node_id;
    return this.nodeId;
  }

  async heartbeat(): Promise<any> {
    let res: any;
    try {
      res = await this.node.call(
        'Heartbeat',
        {
          node_id: this.nodeId,
          current_status: { node_id: this.nodeId, is_online: true, ram_available: String(16 * 2 ** 30), ram_total: String(32 * 2 ** 30) },
          active_jobs: [],
        },
        { deadlineMs: 5000 },
      );
    } catch (err) {
      this.beats.failed += 1;
      this.beats.lastError = (err as Error).message;
      throw err;
    }
    // As the shipping node: a heartbeat counts when the reply is SUCCESS with keep_alive.
    if (res.status === 1 && res.keep_alive) {
      this.beats.ok += 1;
      this.beats.lastOkAt = Date.now();
    } else {
      this.beats.failed += 1;
      this.beats.lastError = JSON.stringify(res);
    }
    for (const id of res.jobs_to_cancel ?? []) this.cancelOrders.add(id);
    return res;
  }

  /** Stops heartbeating (the node goes silent) but keeps serving. */
  pauseHeartbeats(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  resumeHeartbeats(): void {
    this.pauseHeartbeats();
    this.timer = setInterval(() => void this.heartbeat().catch(() => undefined), this.opts.heartbeatMs ?? 1000);
    void this.heartbeat().catch(() => undefined);
  }

  /** NotifyJobAccepted as the shipping node sends it: no authorization metadata, raw clock ticks. */
  accepted(jobId: string, opts: ReportOptions = {}) {
    return this.node.call(
      'NotifyJobAccepted',
      { node_id: this.nodeId, job_id: jobId, engine_address: 'direct_p2p', accepted_at: (BigInt(Date.now()) * 1_000_000n).toString(), node_endpoint: '0.0.0.0:50052' },
      opts,
    );
  }

  progress(jobId: string, progress: number, epoch: number, opts: ReportOptions = {}) {
    return this.node.call(
      'ReportProgress',
      {
        node_id: this.nodeId,
        job_id: jobId,
        status: { job_id: jobId, status: 4, progress, current_epoch: epoch, metrics: { loss: 1 - progress } },
      },
      opts,
    );
  }

  complete(jobId: string, opts: ReportOptions = {}) {
    return this.node.call(
      'ReportCompletion',
      {
        node_id: this.nodeId,
        job_id: jobId,
        result: { job_id: jobId, status: 1, final_metrics: { loss: 0.01 }, total_compute_time: '42' },
      },
      opts,
    );
  }

  fail(jobId: string, message: string) {
    return this.jobStatus.call('ReportJobResult', { node_id: this.nodeId, job_id: jobId, final_status: 6, error_message: message });
  }

  async stop(): Promise<void> {
    this.pauseHeartbeats();
    this.node.close();
    this.jobStatus.close();
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
  }
}
