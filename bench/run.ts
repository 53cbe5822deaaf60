import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { E2EBench, type E2EResult, type LossResult } from './e2e';
import { benchHeartbeats, type HeartbeatResult } from './heartbeats';
import { startInfra, type Infra } from './lib/infra';
import { startBenchSystem, type BenchSystem } from './lib/system';
import { log, machineInfo, round, table } from './lib/util';
import { benchNodeCache, benchRankCandidates, type LatencyStats, type NodeCacheStats } from './matching';

/**
 * `npm run bench [-- --json FILE] [--quick] [--only matching,heartbeats,e2e,loss] [--profile DIR]`
 *
 * Starts its own embedded Postgres, Temporal dev server and local Solana ledger (127.0.0.1 only), the real
 * system (migrate, worker and API processes with the default configuration), load generators and baselines,
 * measures, prints a table and stops everything — also on error or Ctrl-C. Not part of the tests.
 */

interface Args {
  json?: string;
  quick: boolean;
  only: Set<string>;
  profileDir?: string;
  temporalDb: 'file' | 'memory';
  hbClient: 'grpc-js' | 'http2';
  e2eConcurrency?: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, only: new Set(['matching', 'heartbeats', 'e2e', 'loss']), temporalDb: 'file', hbClient: 'http2' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--json' || a.startsWith('--json=')) args.json = path.resolve(value());
    else if (a === '--quick') args.quick = true;
    else if (a === '--only' || a.startsWith('--only=')) args.only = new Set(value().split(','));
    else if (a === '--profile' || a.startsWith('--profile=')) args.profileDir = path.resolve(value());
    else if (a === '--temporal-db' || a.startsWith('--temporal-db=')) args.temporalDb = value() === 'memory' ? 'memory' : 'file';
    else if (a === '--hb-client' || a.startsWith('--hb-client=')) args.hbClient = value() === 'grpc-js' ? 'grpc-js' : 'http2';
    else if (a === '--e2e-concurrency' || a.startsWith('--e2e-concurrency=')) args.e2eConcurrency = Number(value());
    else if (a === '--help' || a === '-h') {
      console.log('npm run bench -- [--json FILE] [--quick] [--only matching,heartbeats,e2e,loss] [--profile DIR] [--temporal-db file|memory] [--hb-client http2|grpc-js] [--e2e-concurrency N]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return args;
}

const GOALS = {
  matching_10k_p99_ms: 2,
  matching_100k_p99_ms: 10,
  heartbeats_per_s: 10_000,
  e2e_ratio: 0.8,
  submit_to_assigned_p50_ms: 50,
  node_loss_to_reassigned_s: 35,
};

/** Hard cap on the whole run: whatever hangs, everything is stopped after this. */
const RUN_DEADLINE_MS = 20 * 60_000;

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const machine = machineInfo();
  log(`machine: ${machine.nproc} CPUs (${machine.cpu_model}), ${machine.mem_total_gib} GiB, Node ${machine.node}, load average ${machine.loadavg_at_start.join(' ')}`);

  const q = args.quick;
  // --cpu-prof for the API, the worker and the twin's worker.
  const profileArgs = args.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${args.profileDir}`] : undefined;
  const cfg = {
    matching: { warmup10k: 300, iter10k: q ? 500 : 3000, warmup100k: 40, iter100k: q ? 100 : 400 },
    heartbeats: { ids: q ? 5000 : 20_000, procs: 2, concurrency: 64, channels: 8, pairs: q ? 1 : 3, warmupMs: 2000, measureMs: q ? 5000 : 10_000, client: args.hbClient },
    e2e: { nodes: 64, gpusPerNode: 4, concurrency: args.e2eConcurrency ?? 64, pairs: q ? 1 : 3, warmupMs: q ? 3000 : 5000, measureMs: q ? 8000 : 15_000, latencyMs: q ? 10_000 : 30_000, lossSamples: q ? 3 : 6 },
  };

  const matching: Record<string, unknown> = {};
  let heartbeats: HeartbeatResult | undefined;
  let e2e: E2EResult | undefined;
  let loss: LossResult | undefined;
  const failures: string[] = [];

  let infra: Infra | undefined;
  let sys: BenchSystem | undefined;
  let e2eBench: E2EBench | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      log('stopping everything');
      await e2eBench?.stop().catch((err) => log(`stopping the e2e driver failed: ${String(err)}`));
      await sys?.stop().catch((err) => log(`stopping the system failed: ${String(err)}`));
      await infra?.stop().catch((err) => log(`stopping the infrastructure failed: ${String(err)}`));
    })());
  const onSignal = (signal: NodeJS.Signals) => {
    log(`${signal}: stopping`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // A child dying under Ctrl-C can reject a request nobody awaits any more: report it, keep cleaning up.
  process.on('unhandledRejection', (err) => log(`unhandled rejection: ${String((err as Error)?.message ?? err).split('\n')[0]}`));
  const deadline = setTimeout(() => {
    log(`the run exceeded ${RUN_DEADLINE_MS / 60_000} minutes: stopping`);
    void cleanup().finally(() => process.exit(2));
  }, RUN_DEADLINE_MS);
  deadline.unref();

  const section = async (name: string, fn: () => Promise<void>) => {
    const t0 = Date.now();
    try {
      await fn();
      log(`${name}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } catch (err) {
      failures.push(`${name}: ${(err as Error).stack ?? String(err)}`);
      log(`${name} FAILED: ${(err as Error).stack ?? String(err)}`);
    }
  };

  try {
    if (args.only.has('matching')) {
      await section('matching (rankCandidates, synthetic)', async () => {
        for (const [key, n, warmup, iterations] of [
          ['nodes_10k', 10_000, cfg.matching.warmup10k, cfg.matching.iter10k],
          ['nodes_100k', 100_000, cfg.matching.warmup100k, cfg.matching.iter100k],
        ] as const) {
          const s = benchRankCandidates(n, { warmup, iterations });
          matching[key] = s;
          log(`matching: ${key} p50 ${s.p50_ms} ms, p99 ${s.p99_ms} ms (mean ${s.mean_ms}, max ${s.max_ms}, ${s.iterations} jobs, ${s.eligible_avg} eligible on average)`);
        }
      });
    }

    await section('infrastructure', async () => {
      infra = await startInfra({ temporalDb: args.temporalDb, pgFast: false });
      log(`infrastructure: Postgres ${infra.pgUrl.replace(/:[^:@/]*@/, ':***@')}, Temporal ${infra.temporalAddress} (${args.temporalDb}), ledger ${infra.ledgerUrl}`);
    });
    // Without it nothing else can run: the report (what was measured, and the failure) still follows.
    const inf = infra;
    if (inf) {
      if (args.only.has('matching')) {
        await section('matching (NodeCache over Postgres)', async () => {
          const url = await inf.createDatabase('bench_cache');
          const cache = await benchNodeCache(url, [10_000, 100_000], { iterations: (n) => (n >= 100_000 ? (q ? 50 : 150) : q ? 200 : 1000), liveSeconds: q ? 4 : 10 });
          matching.node_cache = cache;
          for (const [k, v] of Object.entries(cache)) {
            log(`node cache ${k}: full load ${v.full_load_ms} ms, idle refresh ${v.refresh_idle_ms} ms, steady refresh ${v.refresh_steady_ms} ms, candidates() ${v.candidates_ms} ms, candidates()+rank p50 ${v.match_path.p50_ms} / p99 ${v.match_path.p99_ms} ms; during background refreshes (${v.live_refreshes}) p50 ${v.match_path_live.p50_ms} / p99 ${v.match_path_live.p99_ms} ms`);
          }
        });
      }

      if (args.only.has('heartbeats') || args.only.has('e2e') || args.only.has('loss')) {
        await section('system start', async () => {
          sys = await startBenchSystem(inf, { name: 'bench_system', nodeArgs: profileArgs });
          log(`system: gRPC ${sys.grpcAddress}, REST ${sys.restUrl}, API pid ${sys.api.pid}, worker pid ${sys.worker.pid}`);
        });
      }
      const system = sys;

      if (system && args.only.has('heartbeats')) {
        await section('heartbeats', async () => {
          heartbeats = await benchHeartbeats(system, inf.pgPid, inf.temporalPid, cfg.heartbeats);
        });
      }

      if (system && (args.only.has('e2e') || args.only.has('loss'))) {
        const bench = new E2EBench(inf, system, cfg.e2e, profileArgs);
        e2eBench = bench;
        await section('e2e setup', () => bench.start());
        if (args.only.has('e2e')) await section('e2e', async () => void (e2e = await bench.capacityAndLatency()));
        if (args.only.has('loss')) await section('node loss', async () => void (loss = await bench.nodeLoss()));
      }
    }
  } finally {
    await cleanup();
    clearTimeout(deadline);
  }

  const m10 = matching.nodes_10k as LatencyStats | undefined;
  const m100 = matching.nodes_100k as LatencyStats | undefined;
  const cache = matching.node_cache as Record<string, NodeCacheStats> | undefined;
  const results = {
    matching: {
      nodes_10k: m10 ?? null,
      nodes_100k: m100 ?? null,
      ...(cache && { node_cache: cache }),
    },
    heartbeats: heartbeats ?? null,
    e2e: e2e ?? null,
    node_loss_to_reassigned_s: loss ?? null,
  };
  const verdict = (value: number | null | undefined, goal: number, higherIsBetter: boolean) => {
    if (value === null || value === undefined || !Number.isFinite(value)) return 'n/a';
    const ok = higherIsBetter ? value >= goal : value <= goal;
    const pct = higherIsBetter ? (value / goal - 1) * 100 : (value / goal - 1) * 100;
    return ok ? 'met' : `MISSED (${pct > 0 ? '+' : ''}${pct.toFixed(0)} %)`;
  };
  const goals = {
    matching_10k_p99: verdict(m10?.p99_ms, GOALS.matching_10k_p99_ms, false),
    matching_100k_p99: verdict(m100?.p99_ms, GOALS.matching_100k_p99_ms, false),
    heartbeats_per_s: verdict(heartbeats?.per_s, GOALS.heartbeats_per_s, true),
    e2e_ratio: verdict(e2e?.ratio, GOALS.e2e_ratio, true),
    submit_to_assigned_p50: verdict(e2e?.submit_to_assigned_ms.p50, GOALS.submit_to_assigned_p50_ms, false),
    node_loss_p99: verdict(loss ? (loss.p99 ?? Infinity) : undefined, GOALS.node_loss_to_reassigned_s, false),
  };

  const rows: (string | number | null | undefined)[][] = [
    ['matching 10k nodes, p50 / p99 (ms)', `${m10?.p50_ms ?? '—'} / ${m10?.p99_ms ?? '—'}`, '—', '—', `p99 ≤ ${GOALS.matching_10k_p99_ms}`, goals.matching_10k_p99],
    ['matching 100k nodes, p50 / p99 (ms)', `${m100?.p50_ms ?? '—'} / ${m100?.p99_ms ?? '—'}`, '—', '—', `p99 ≤ ${GOALS.matching_100k_p99_ms}`, goals.matching_100k_p99],
    ...Object.entries(cache ?? {}).map(([k, v]) => [
      `  matchNode path ${k} (candidates()+rank), p50 / p99 (ms)`,
      `${v.match_path.p50_ms} / ${v.match_path.p99_ms}`,
      '—',
      '—',
      '',
      `refresh ${v.refresh_steady_ms} ms`,
    ]),
    ...Object.entries(cache ?? {}).map(([k, v]) => [
      `  matchNode path ${k} during background refreshes, p50 / p99 (ms)`,
      `${v.match_path_live.p50_ms} / ${v.match_path_live.p99_ms}`,
      '—',
      '—',
      '',
      `${v.live_refreshes} refreshes`,
    ]),
    ['heartbeats/s (API vs grpc-js echo)', heartbeats?.per_s, heartbeats?.baseline_per_s, heartbeats?.ratio, `≥ ${GOALS.heartbeats_per_s}/s`, goals.heartbeats_per_s],
    ['e2e jobs/s (system vs bare Temporal twin)', e2e?.jobs_per_s, e2e?.baseline_jobs_per_s, e2e?.ratio, `ratio ≥ ${GOALS.e2e_ratio}`, goals.e2e_ratio],
    [
      `submit→assigned at ${e2e?.latency_run.rate_per_s ?? '—'} jobs/s, p50 / p99 (ms)`,
      `${e2e?.submit_to_assigned_ms.p50 ?? '—'} / ${e2e?.submit_to_assigned_ms.p99 ?? '—'}`,
      `${e2e?.latency_run.twin_submit_to_assigned_ms.p50 ?? '—'} / ${e2e?.latency_run.twin_submit_to_assigned_ms.p99 ?? '—'}`,
      e2e?.latency_run.ratio_to_twin_p50,
      `p50 ≤ ${GOALS.submit_to_assigned_p50_ms}`,
      goals.submit_to_assigned_p50,
    ],
    ['node loss → reassigned, p50 / p99 (s)', `${loss?.p50 ?? '—'} / ${loss?.p99 ?? '—'}`, '—', '—', `≤ ${GOALS.node_loss_to_reassigned_s}`, goals.node_loss_p99],
  ];
  console.log('');
  console.log(`CyxWiz Central benchmark — ${new Date(started).toISOString()}`);
  console.log(`machine: nproc ${machine.nproc}, CPU ${machine.cpu_model}, memory ${machine.mem_total_gib} GiB, Node ${machine.node}, ${machine.platform}; load average at start ${machine.loadavg_at_start.join(' ')}, at end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log('');
  console.log(table(['measure', 'result', 'baseline', 'ratio', 'goal', 'verdict'], rows));
  if (e2e) {
    console.log('');
    console.log(
      `e2e detail: CPU s/job system ${e2e.cpu_s_per_job.system.total} (${Object.entries(e2e.cpu_s_per_job.system).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v}`).join(', ')}); twin ${e2e.cpu_s_per_job.twin.total}; ` +
        `history events/job system ${e2e.history.system?.events ?? '—'}, twin ${e2e.history.twin?.events ?? '—'}; whole-job latency p50 system ${e2e.job_latency_ms.system_p50} ms, twin ${e2e.job_latency_ms.twin_p50} ms`,
    );
    for (const kind of ['system', 'twin'] as const) {
      const b = e2e.assign_breakdown_ms[kind];
      if (b) console.log(`submit→assigned breakdown (${kind}, median ms): ${Object.entries(b).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    }
  }
  if (heartbeats) {
    console.log(`heartbeat detail: API p50/p99 ack ${heartbeats.api_p50_ms}/${heartbeats.api_p99_ms} ms (echo ${heartbeats.echo_p50_ms}/${heartbeats.echo_p99_ms}); CPU µs/beat ${Object.entries(heartbeats.cpu_us_per_beat).map(([k, v]) => `${k} ${v}`).join(', ')}; fresh in Postgres ${heartbeats.persisted_fresh}/${heartbeats.ids}`);
  }
  if (failures.length) console.log(`\n${failures.length} section(s) failed:\n${failures.map((f) => `  ${f.split('\n').slice(0, 6).join('\n    ')}`).join('\n')}`);
  const duration = round((Date.now() - started) / 1000, 1);
  console.log(`\ntotal ${duration} s`);

  if (args.json) {
    const out = {
      ...results,
      machine: { ...machine, loadavg_at_end: os.loadavg().map((x) => Math.round(x * 100) / 100) },
      goals,
      run: { started_at: new Date(started).toISOString(), duration_s: duration, quick: args.quick, temporal_db: args.temporalDb, config: cfg, failures },
    };
    fs.mkdirSync(path.dirname(args.json), { recursive: true });
    fs.writeFileSync(args.json, `${JSON.stringify(out, null, 2)}\n`);
    log(`results written to ${args.json}`);
  }
  process.exitCode = failures.length > 0 ? 1 : 0;
}

main().then(
  // Clients of stopped servers may keep timers alive; the work is done.
  () => process.exit(process.exitCode ?? 0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
