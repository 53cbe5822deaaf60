import { Client as TemporalClient, Connection } from '@temporalio/client';
import { Client } from 'pg';
import type { Infra } from './lib/infra';
import { Child } from './lib/proc';
import type { JobTiming } from './procs/driver';
import type { BenchSystem } from './lib/system';
import { CpuMeter, log, median, quantile, round, sleep } from './lib/util';

export interface E2EOptions {
  nodes: number;
  gpusPerNode: number;
  /** Jobs in flight in the closed-loop capacity runs. */
  concurrency: number;
  pairs: number;
  warmupMs: number;
  measureMs: number;
  /** Open-loop latency run at half the measured capacity. */
  latencyMs: number;
  lossSamples: number;
}

interface RunResult {
  timings: JobTiming[];
  errors: string[];
  errorCount: number;
  launched: number;
  stuck: number;
}

export interface E2EResult {
  jobs_per_s: number | null;
  baseline_jobs_per_s: number | null;
  ratio: number | null;
  submit_to_assigned_ms: { p50: number | null; p99: number | null };
  reps: { kind: 'system' | 'twin'; jobs_per_s: number; errors: number; cpu_s: Record<string, number> }[];
  pair_ratios: (number | null)[];
  /** Closed-loop whole-job latency (submit → payment released), median over reps. */
  job_latency_ms: { system_p50: number | null; twin_p50: number | null };
  latency_run: {
    rate_per_s: number;
    samples: number;
    errors: number;
    achieved_jobs_per_s: number | null;
    /** Submit → the node receives AssignJob. */
    submit_to_dispatch_ms: { p50: number | null; p99: number | null };
    /** Server side: the jobs row's created_at → the 'assigned' job_events row. */
    db_created_to_assigned_ms: { p50: number | null; p99: number | null };
    twin_submit_to_assigned_ms: { p50: number | null; p99: number | null };
    /** Our p50 ÷ the twin's (start → its 'accepted' update returns, i.e. after escrow, match, dispatch, assigned). */
    ratio_to_twin_p50: number | null;
  };
  /** System jobs of the capacity runs that went through 'queued' (found no node they could claim at first). */
  queueing: { jobs: number; queued: number };
  /** CPU seconds per job by process (median over the system reps / twin reps). */
  cpu_s_per_job: { system: Record<string, number | null>; twin: Record<string, number | null> };
  history: { system?: { events: number; state_transitions: number }; twin?: { events: number; state_transitions: number } };
  /**
   * Where submit→assigned goes, from workflow histories of jobs of the latency runs (median ms per segment):
   * submit → workflow started; started → first workflow task started (pickup); that task, which runs the
   * escrow beside the match, then dispatch and 'assigned' (all local activities) and schedules the watch; task
   * completed → the Engine sees the assignment (negative when the Engine is told by the 'assigned' row's
   * notification before the task completes).
   */
  assign_breakdown_ms: { system?: Record<string, number | null>; twin?: Record<string, number | null> };
  setup: string;
}

export interface LossResult {
  p50: number | null;
  p99: number | null;
  samples: { reassigned_s: number | null; detached_s: number | null; lost_node: string; new_node: string | null }[];
  setup: string;
}

const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) => (t ? Number(String(t.seconds ?? 0)) * 1000 + (t.nanos ?? 0) / 1e6 : NaN);

/** Segments of one job's way to 'assigned', from its workflow history (see E2EResult.assign_breakdown_ms). */
async function assignBreakdown(client: TemporalClient, t: JobTiming): Promise<Record<string, number> | undefined> {
  const history = await client.workflow.getHandle(t.jobId).fetchHistory();
  const events = history.events ?? [];
  const started = ms(events[0]?.eventTime);
  const taskStarted = events.find((e) => e.workflowTaskStartedEventAttributes);
  const taskCompleted = events.find((e) => e.workflowTaskCompletedEventAttributes);
  const watch = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'watchNode');
  if (!taskStarted || !taskCompleted || !watch) return undefined;
  return {
    submit_to_started: started - t.scheduledAt,
    first_task_pickup: ms(taskStarted.eventTime) - started,
    // Escrow beside match, then dispatch and 'assigned' (local activities): the first task ends with the watch.
    first_task: ms(taskCompleted.eventTime) - ms(taskStarted.eventTime),
    to_engine: t.assignedAt - ms(taskCompleted.eventTime),
    total: t.assignedAt - t.scheduledAt,
  };
}

const lat = (xs: number[]) => ({ p50: round(quantile(xs, 0.5), 1), p99: round(quantile(xs, 0.99), 1) });

export class E2EBench {
  private driver?: Child;
  private twin?: Child;

  constructor(
    private readonly infra: Infra,
    private readonly sys: BenchSystem,
    private readonly o: E2EOptions,
    /** Node flags of the twin worker (the bench's --profile gives it the system's). */
    private readonly twinNodeArgs?: string[],
  ) {}

  async start(): Promise<void> {
    this.driver = new Child({ name: 'driver', entry: 'bench/procs/driver.ts', ipc: true });
    this.twin = new Child({ name: 'twin-worker', entry: 'bench/twin/worker.ts', args: [this.infra.temporalAddress, 'bench-twin'], nodeArgs: this.twinNodeArgs });
    await Promise.all([
      this.driver.waitForMessage((m) => m?.ready, 60_000, 'ready message'),
      this.twin.waitForLine((l) => l.includes('twin worker running'), 120_000, 'twin worker start'),
    ]);
    const t0 = Date.now();
    await this.driver.request(
      { cmd: 'startNodes', central: this.sys.grpcAddress, count: this.o.nodes, gpus: this.o.gpusPerNode, vramGiB: 8, heartbeatMs: 10_000, tag: 'e2e', wallet: this.infra.chain.demoWallets.node },
      120_000,
    );
    log(`e2e: ${this.o.nodes} simulated nodes × ${this.o.gpusPerNode} GPUs registered in ${Date.now() - t0} ms`);
    await sleep(1500);
  }

  private meter() {
    return new CpuMeter(() => ({
      api: this.sys.api.pid,
      worker: this.sys.worker.pid,
      temporal: this.infra.temporalPid,
      postgres: this.infra.pgPid,
      driver: this.driver?.pid,
      twin_worker: this.twin?.pid,
      bench: process.pid,
    }));
  }

  private async runWindow(kind: 'system' | 'twin', mode: 'closed' | 'open', load: { concurrency?: number; rate?: number }, warmupMs: number, measureMs: number) {
    const startAt = Date.now() + 1000;
    const measureFrom = startAt + warmupMs;
    const measureTo = measureFrom + measureMs;
    const cpu = this.meter();
    const pending = this.driver!.request<RunResult>(
      { cmd: 'run', kind, mode, ...load, startAt, measureFrom, measureTo, temporalAddress: this.infra.temporalAddress, taskQueue: 'bench-twin', drainMs: 60_000 },
      warmupMs + measureMs + 120_000,
    );
    await sleep(measureFrom - Date.now());
    cpu.mark();
    await sleep(measureTo - Date.now());
    const cpuUsed = cpu.delta();
    const result = await pending;
    return { result, cpuUsed, measureFrom, measureTo };
  }

  async capacityAndLatency(): Promise<E2EResult> {
    const o = this.o;
    const reps: E2EResult['reps'] = [];
    const jobLatency: Record<'system' | 'twin', number[]> = { system: [], twin: [] };
    const perJobCpu: Record<'system' | 'twin', Record<string, number>[]> = { system: [], twin: [] };
    const someJob: Partial<Record<'system' | 'twin', string>> = {};
    for (let pair = 0; pair < o.pairs; pair++) {
      for (const kind of ['system', 'twin'] as const) {
        const { result, cpuUsed, measureFrom, measureTo } = await this.runWindow(kind, 'closed', { concurrency: o.concurrency }, o.warmupMs, o.measureMs);
        const inWindow = result.timings.filter((t) => t.doneAt >= measureFrom && t.doneAt < measureTo);
        const perS = inWindow.length / (o.measureMs / 1000);
        someJob[kind] ??= inWindow[0]?.jobId;
        jobLatency[kind].push(median(inWindow.map((t) => t.doneAt - t.scheduledAt)));
        perJobCpu[kind].push(Object.fromEntries(Object.entries(cpuUsed).map(([k, v]) => [k, v / Math.max(1, inWindow.length)])));
        reps.push({ kind, jobs_per_s: round(perS, 2) ?? 0, errors: result.errorCount + result.stuck, cpu_s: Object.fromEntries(Object.entries(cpuUsed).map(([k, v]) => [k, round(v, 2) ?? 0])) });
        const cpuNote = Object.entries(cpuUsed).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
        log(`e2e: pair ${pair + 1}/${o.pairs} ${kind.padEnd(6)} ${perS.toFixed(2)} jobs/s (${inWindow.length} in ${o.measureMs / 1000} s), errors ${result.errorCount}, stuck ${result.stuck}; CPU s: ${cpuNote}`);
        if (result.errors.length) log(`e2e: first errors: ${result.errors.slice(0, 3).join(' | ')}`);
        await sleep(1000);
      }
    }
    const sysRate = median(reps.filter((r) => r.kind === 'system').map((r) => r.jobs_per_s));
    const twinRate = median(reps.filter((r) => r.kind === 'twin').map((r) => r.jobs_per_s));
    const queueing = await this.queueStats();
    log(`e2e: ${queueing.queued} of ${queueing.jobs} system jobs waited in the queue at least once (no free node they could claim)`);
    await this.waitQuiet();

    // Latency at a fixed arrival rate of half the measured capacity (open loop; from the scheduled time).
    const rate = Math.max(0.5, sysRate / 2);
    log(`e2e: latency run at ${rate.toFixed(2)} jobs/s (half of ${sysRate.toFixed(2)}) for ${o.latencyMs / 1000} s`);
    const skipMs = 2000;
    const sysRun = await this.runWindow('system', 'open', { rate }, 0, o.latencyMs);
    const sysSamples = sysRun.result.timings.filter((t) => t.scheduledAt >= sysRun.measureFrom + skipMs);
    const assigned = sysSamples.map((t) => t.assignedAt - t.scheduledAt);
    const dispatched = sysSamples.filter((t) => t.nodeAssignAt).map((t) => t.nodeAssignAt! - t.scheduledAt);
    const dbLatency = await this.dbAssignLatency(sysSamples.map((t) => t.jobId));
    log(`e2e: system submit→assigned p50 ${quantile(assigned, 0.5).toFixed(1)} ms, p99 ${quantile(assigned, 0.99).toFixed(1)} ms (${assigned.length} jobs, ${sysRun.result.errorCount} errors)`);
    await this.waitQuiet();
    const twinRun = await this.runWindow('twin', 'open', { rate }, 0, Math.min(o.latencyMs, 20_000));
    const twinAssigned = twinRun.result.timings.filter((t) => t.scheduledAt >= twinRun.measureFrom + skipMs).map((t) => t.assignedAt - t.scheduledAt);
    log(`e2e: twin submit→assigned p50 ${quantile(twinAssigned, 0.5).toFixed(1)} ms, p99 ${quantile(twinAssigned, 0.99).toFixed(1)} ms`);

    const history: E2EResult['history'] = {};
    const breakdown: E2EResult['assign_breakdown_ms'] = {};
    const connection = await Connection.connect({ address: this.infra.temporalAddress });
    try {
      const client = new TemporalClient({ connection, namespace: 'default' });
      const twinSamples = twinRun.result.timings.filter((t) => t.scheduledAt >= twinRun.measureFrom + skipMs);
      for (const [kind, samples] of [['system', sysSamples], ['twin', twinSamples]] as const) {
        const rows: Record<string, number>[] = [];
        for (const t of samples.slice(0, 25)) {
          const b = await assignBreakdown(client, t).catch(() => undefined);
          if (b) rows.push(b);
        }
        const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
        breakdown[kind] = Object.fromEntries(keys.map((k) => [k, round(median(rows.map((r) => r[k]).filter((x) => Number.isFinite(x))), 1)]));
      }
      for (const kind of ['system', 'twin'] as const) {
        const id = someJob[kind];
        if (!id) continue;
        const d = await client.workflow.getHandle(id).describe();
        const raw = d.raw.workflowExecutionInfo;
        const num = (x: unknown) => Number(x !== null && typeof x === 'object' ? String(x) : (x ?? 0));
        history[kind] = { events: num(raw?.historyLength), state_transitions: num(raw?.stateTransitionCount) };
      }
    } catch (err) {
      log(`e2e: could not describe workflows: ${String(err)}`);
    } finally {
      await connection.close();
    }

    const cpuMedian = (rows: Record<string, number>[]) => {
      const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
      const out: Record<string, number | null> = Object.fromEntries(keys.map((k) => [k, round(median(rows.map((r) => r[k] ?? 0)), 4)]));
      out.total = round(median(rows.map((r) => Object.values(r).reduce((a, b) => a + b, 0))), 4);
      return out;
    };
    const sysP50 = quantile(assigned, 0.5);
    const twinP50 = quantile(twinAssigned, 0.5);
    return {
      jobs_per_s: round(sysRate, 2),
      baseline_jobs_per_s: round(twinRate, 2),
      ratio: round(sysRate / twinRate, 3),
      submit_to_assigned_ms: lat(assigned),
      reps,
      pair_ratios: reps.filter((r) => r.kind === 'system').map((r, i) => round(r.jobs_per_s / (reps.filter((x) => x.kind === 'twin')[i]?.jobs_per_s ?? NaN), 3)),
      job_latency_ms: { system_p50: round(median(jobLatency.system), 1), twin_p50: round(median(jobLatency.twin), 1) },
      latency_run: {
        rate_per_s: round(rate, 2) ?? 0,
        samples: assigned.length,
        errors: sysRun.result.errorCount + sysRun.result.stuck,
        achieved_jobs_per_s: round(sysRun.result.timings.length / (o.latencyMs / 1000), 2),
        submit_to_dispatch_ms: lat(dispatched),
        db_created_to_assigned_ms: lat(dbLatency),
        twin_submit_to_assigned_ms: lat(twinAssigned),
        ratio_to_twin_p50: round(sysP50 / twinP50, 2),
      },
      queueing,
      cpu_s_per_job: { system: cpuMedian(perJobCpu.system), twin: cpuMedian(perJobCpu.twin) },
      history,
      assign_breakdown_ms: breakdown,
      setup: `${o.nodes} simulated nodes × ${o.gpusPerNode} GPUs (capacity ${o.nodes * o.gpusPerNode}); closed loop with ${o.concurrency} jobs in flight; ${o.pairs} system/twin pairs of ${o.measureMs / 1000} s after ${o.warmupMs / 1000} s warm-up; S = 2 progress reports; Engine watches each job with StreamJobUpdates`,
    };
  }

  /** Waits (up to 30 s) until the server processes are nearly idle, so a run does not inherit the last one's backlog. */
  private async waitQuiet(): Promise<void> {
    const meter = new CpuMeter(() => ({ api: this.sys.api.pid, worker: this.sys.worker.pid, temporal: this.infra.temporalPid, postgres: this.infra.pgPid, twin: this.twin?.pid }));
    const t0 = Date.now();
    for (;;) {
      meter.mark();
      await sleep(1000);
      const used = Object.values(meter.delta()).reduce((a, b) => a + b, 0);
      if (used < 0.25 || Date.now() - t0 > 30_000) {
        log(`e2e: servers quiet after ${((Date.now() - t0) / 1000).toFixed(0)} s (${used.toFixed(2)} cores in the last second)`);
        return;
      }
    }
  }

  private async queueStats(): Promise<{ jobs: number; queued: number }> {
    const pg = new Client({ connectionString: this.sys.databaseUrl });
    await pg.connect();
    try {
      const { rows } = await pg.query<{ jobs: string; queued: string }>(
        `select (select count(*) from jobs where id like 'bench-%')::text as jobs,
                (select count(distinct job_id) from job_events where to_status = 'queued' and job_id like 'bench-%')::text as queued`,
      );
      return { jobs: Number(rows[0].jobs), queued: Number(rows[0].queued) };
    } finally {
      await pg.end();
    }
  }

  private async dbAssignLatency(jobIds: string[]): Promise<number[]> {
    if (jobIds.length === 0) return [];
    const pg = new Client({ connectionString: this.sys.databaseUrl });
    await pg.connect();
    try {
      const { rows } = await pg.query<{ ms: number }>(
        `select extract(epoch from (e.at - j.created_at)) * 1000 as ms
           from jobs j join job_events e on e.job_id = j.id and e.to_status = 'assigned'
          where j.id = any($1)`,
        [jobIds],
      );
      return rows.map((r) => Number(r.ms));
    } finally {
      await pg.end();
    }
  }

  async nodeLoss(): Promise<LossResult> {
    const { samples, victims, holders } = await this.driver!.request<{
      victims: string[];
      holders: string[];
      samples: { jobId: string; lostNode: string; newNode: string | null; detachedS: number | null; reassignedS: number | null }[];
    }>({ cmd: 'nodeLoss', count: this.o.lossSamples, heartbeatMs: 10_000, timeoutMs: 90_000 }, 240_000);
    log(`node loss: victims ${victims.join(', ')}; holders ${holders.join(', ')}`);
    const values = samples.map((s) => s.reassignedS).filter((x): x is number => x !== null);
    const missing = samples.length - values.length;
    return {
      p50: round(quantile(values, 0.5), 2),
      // A sample that never moved within 90 s counts as the worst.
      p99: missing > 0 ? null : round(quantile(values, 0.99), 2),
      samples: samples.map((s) => ({ reassigned_s: round(s.reassignedS ?? NaN, 2), detached_s: round(s.detachedS ?? NaN, 2), lost_node: s.lostNode, new_node: s.newNode })),
      setup: `${this.o.lossSamples} running jobs at once, each on its own node that goes silent right after an acknowledged heartbeat (10 s beats); default JOB_HEARTBEAT_TIMEOUT_S=30, NODE_OFFLINE_AFTER_S=30; GetJobStatus polled every 100 ms`,
    };
  }

  async stop(): Promise<void> {
    if (this.driver?.running) await this.driver.request({ cmd: 'stop' }, 15_000).catch(() => undefined);
    await Promise.all([this.driver?.stop(), this.twin?.stop()]);
  }
}
