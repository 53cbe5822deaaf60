import { Client } from 'pg';
import { getFreePort } from '../src/infra/process';
import { Child } from './lib/proc';
import type { BenchSystem } from './lib/system';
import { CpuMeter, log, median, round, sleep } from './lib/util';

export interface HeartbeatOptions {
  /** Simulated node ids (each beats in turn). */
  ids: number;
  /** Load generator processes. */
  procs: number;
  /** Calls in flight per load process. */
  concurrency: number;
  /** HTTP/2 connections per load process. */
  channels: number;
  /** A/B pairs (echo, API). */
  pairs: number;
  warmupMs: number;
  measureMs: number;
  /** The load generator's client library (see bench/procs/hb-load.ts). */
  client: 'grpc-js' | 'http2';
}

export interface HeartbeatResult {
  per_s: number | null;
  baseline_per_s: number | null;
  ratio: number | null;
  reps: { target: 'echo' | 'api'; per_s: number; p50_ms: number; p99_ms: number; errors: number; cpu_s: Record<string, number> }[];
  pair_ratios: (number | null)[];
  api_p50_ms: number | null;
  api_p99_ms: number | null;
  echo_p50_ms: number | null;
  echo_p99_ms: number | null;
  /** CPU microseconds per heartbeat (median over the API reps; echo_server over the echo reps), by process. */
  cpu_us_per_beat: Record<string, number | null>;
  /** Ids whose last_heartbeat in Postgres is newer than the last API rep's start (should be all of them). */
  persisted_fresh: number;
  ids: number;
  prime_ms: number;
  setup: string;
}

/**
 * Heartbeats/s ingested by the real API over gRPC, beside a bare grpc-js echo server with the same proto
 * method, driven by the same load processes, alternating echo/API for `pairs` pairs.
 */
export async function benchHeartbeats(sys: BenchSystem, pgPid: number, temporalPid: number, o: HeartbeatOptions): Promise<HeartbeatResult> {
  const echoPort = await getFreePort();
  const echo = new Child({ name: 'echo', entry: 'bench/procs/echo-server.ts', args: [String(echoPort)] });
  const loads = Array.from({ length: o.procs }, (_, i) => new Child({ name: `hb-load-${i}`, entry: 'bench/procs/hb-load.ts', ipc: true }));
  try {
    await echo.waitForLine((l) => l.startsWith('echo ready'), 60_000, 'echo server start');
    await Promise.all(loads.map((l) => l.waitForMessage((m) => m?.ready, 60_000, 'ready message')));
    const ids = Array.from({ length: o.ids }, (_, i) => `hbsim-${String(i).padStart(6, '0')}`);
    const shares = loads.map((_, p) => ids.filter((_, i) => i % loads.length === p));

    log(`heartbeats: priming the API with ${o.ids} node ids (first beat of an unknown id creates its record)`);
    const primeStart = Date.now();
    await Promise.all(loads.map((l, p) => l.request({ cmd: 'prime', client: o.client, target: sys.grpcAddress, ids: shares[p], concurrency: 32, channels: o.channels }, 180_000)));
    const primeMs = Date.now() - primeStart;
    await sleep(2000);

    const cpu = new CpuMeter(() => ({
      api: sys.api.pid,
      echo: echo.pid,
      postgres: pgPid,
      temporal: temporalPid,
      worker: sys.worker.pid,
      ...Object.fromEntries(loads.map((l, i) => [`load${i}`, l.pid])),
    }));
    const reps: HeartbeatResult['reps'] = [];
    let lastApiFrom = 0;
    for (let pair = 0; pair < o.pairs; pair++) {
      for (const target of ['echo', 'api'] as const) {
        const address = target === 'echo' ? `127.0.0.1:${echoPort}` : sys.grpcAddress;
        const startAt = Date.now() + 1500;
        const measureFrom = startAt + o.warmupMs;
        const measureTo = measureFrom + o.measureMs;
        const running = Promise.all(
          loads.map((l, p) =>
            l.request<{ ok: number; bad: number; errors: number; lastError: string; windowS: number; p50Ms: number; p99Ms: number }>(
              { cmd: 'run', client: o.client, target: address, ids: shares[p], concurrency: o.concurrency, channels: o.channels, startAt, measureFrom, measureTo },
              o.warmupMs + o.measureMs + 60_000,
            ),
          ),
        );
        await sleep(measureFrom - Date.now());
        cpu.mark();
        await sleep(measureTo - Date.now());
        const cpuUsed = cpu.delta();
        const results = await running;
        const ok = results.reduce((a, r) => a + r.ok, 0);
        const errors = results.reduce((a, r) => a + r.errors + r.bad, 0);
        const perS = ok / (o.measureMs / 1000);
        // p50/p99 over processes: the worst process's value (each process sees the same server).
        const p50 = Math.max(...results.map((r) => r.p50Ms));
        const p99 = Math.max(...results.map((r) => r.p99Ms));
        reps.push({ target, per_s: Math.round(perS), p50_ms: round(p50, 2) ?? NaN, p99_ms: round(p99, 2) ?? NaN, errors, cpu_s: Object.fromEntries(Object.entries(cpuUsed).map(([k, v]) => [k, round(v, 2) ?? 0])) });
        if (target === 'api') lastApiFrom = measureFrom;
        log(`heartbeats: pair ${pair + 1}/${o.pairs} ${target.padEnd(4)} ${Math.round(perS)} beats/s, p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms, errors ${errors}${errors ? ` (${results.find((r) => r.lastError)?.lastError ?? ''})` : ''}`);
        await sleep(1000);
      }
    }

    // Freshness: every id beaten during the last API rep must be in Postgres by now (flush every HEARTBEAT_FLUSH_MS).
    await sleep(2500);
    const pg = new Client({ connectionString: sys.databaseUrl });
    await pg.connect();
    let fresh = 0;
    try {
      const { rows } = await pg.query<{ n: string }>(`select count(*)::text as n from nodes where id like 'hbsim-%' and last_heartbeat >= $1`, [new Date(lastApiFrom)]);
      fresh = Number(rows[0]?.n ?? 0);
    } finally {
      await pg.end();
    }

    const apiReps = reps.filter((r) => r.target === 'api');
    const echoReps = reps.filter((r) => r.target === 'echo');
    const perS = median(apiReps.map((r) => r.per_s));
    const basePerS = median(echoReps.map((r) => r.per_s));
    const perBeat = (name: string, of = apiReps) => round(median(of.map((r) => ((r.cpu_s[name] ?? 0) * 1e6) / Math.max(1, r.per_s * (o.measureMs / 1000)))), 1);
    return {
      per_s: round(perS, 0),
      baseline_per_s: round(basePerS, 0),
      ratio: round(perS / basePerS, 3),
      reps,
      pair_ratios: apiReps.map((r, i) => round(r.per_s / (echoReps[i]?.per_s ?? NaN), 3)),
      api_p50_ms: round(median(apiReps.map((r) => r.p50_ms)), 2),
      api_p99_ms: round(median(apiReps.map((r) => r.p99_ms)), 2),
      echo_p50_ms: round(median(echoReps.map((r) => r.p50_ms)), 2),
      echo_p99_ms: round(median(echoReps.map((r) => r.p99_ms)), 2),
      cpu_us_per_beat: { api: perBeat('api'), echo_server: perBeat('echo', echoReps), postgres: perBeat('postgres'), temporal: perBeat('temporal'), load_generators: round(median(apiReps.map((r) => (Object.entries(r.cpu_s).filter(([k]) => k.startsWith('load')).reduce((a, [, v]) => a + v, 0) * 1e6) / Math.max(1, r.per_s * (o.measureMs / 1000)))), 1) },
      persisted_fresh: fresh,
      ids: o.ids,
      prime_ms: primeMs,
      setup: `${o.client} client; ${o.procs} load processes × ${o.concurrency} in flight over ${o.channels} connections each; ${o.ids} node ids; ${o.pairs} echo/API pairs of ${o.measureMs / 1000} s after ${o.warmupMs / 1000} s warm-up`,
    };
  } finally {
    await Promise.all([echo.stop(), ...loads.map((l) => l.stop())]);
  }
}
