import fs from 'node:fs';
import os from 'node:os';

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The q-quantile (0..1) of `values` by nearest rank on a sorted copy; NaN when empty. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

/** The median (the mean of the two middle values for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function mean(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

/** Rounds for reports (keeps JSON readable); NaN/Infinity become null. */
export function round(x: number, digits = 3): number | null {
  if (!Number.isFinite(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export interface Machine {
  nproc: number;
  cpu_model: string;
  mem_total_gib: number;
  node: string;
  platform: string;
  loadavg_at_start: number[];
}

/** nproc, the CPU model from /proc/cpuinfo and the memory, as the report prints them. */
export function machineInfo(): Machine {
  let model = os.cpus()[0]?.model ?? 'unknown';
  try {
    const line = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('model name'));
    if (line) model = line.split(':').slice(1).join(':').trim();
  } catch {
    // not Linux
  }
  return {
    nproc: os.availableParallelism?.() ?? os.cpus().length,
    cpu_model: model,
    mem_total_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    loadavg_at_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

const CLK_TCK = 100; // Linux USER_HZ on every mainstream kernel

/** utime+stime (+ reaped children's) of one process in seconds, or 0 when it is gone. */
function procCpu(pid: number, withReaped: boolean): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is state (field 3); utime = field 14 → index 11, stime 12, cutime 13, cstime 14
    const ticks = Number(fields[11]) + Number(fields[12]) + (withReaped ? Number(fields[13]) + Number(fields[14]) : 0);
    return ticks / CLK_TCK;
  } catch {
    return 0;
  }
}

function parentMap(): Map<number, number[]> {
  const children = new Map<number, number[]>();
  for (const name of fs.readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(pid);
      children.set(ppid, list);
    } catch {
      // gone meanwhile
    }
  }
  return children;
}

/** CPU seconds used so far by `pid` and all its live descendants (plus children it has reaped). */
export function treeCpuSeconds(pid: number, children = parentMap()): number {
  let total = procCpu(pid, true);
  const stack = [...(children.get(pid) ?? [])];
  while (stack.length > 0) {
    const p = stack.pop()!;
    total += procCpu(p, false);
    stack.push(...(children.get(p) ?? []));
  }
  return total;
}

/** Samples CPU seconds of named process trees; `delta()` gives the use since the previous mark. */
export class CpuMeter {
  private marks = new Map<string, number>();
  constructor(private readonly pids: () => Record<string, number | undefined>) {}

  private read(): Map<string, number> {
    const children = parentMap();
    const out = new Map<string, number>();
    for (const [name, pid] of Object.entries(this.pids())) {
      if (pid === undefined) continue;
      // `bench` is this process alone (it hosts the local ledger); its children are measured by name.
      out.set(name, name === 'bench' ? cpuOfSelf() : treeCpuSeconds(pid, children));
    }
    return out;
  }

  mark(): void {
    this.marks = this.read();
  }

  /** CPU seconds per process tree since mark(). */
  delta(): Record<string, number> {
    const now = this.read();
    const out: Record<string, number> = {};
    for (const [name, v] of now) out[name] = v - (this.marks.get(name) ?? 0);
    return out;
  }
}

function cpuOfSelf(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Renders rows as an aligned text table. */
export function table(headers: string[], rows: (string | number | null | undefined)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '—' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(cells[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

export function log(msg: string): void {
  const t = new Date().toISOString().slice(11, 19);
  process.stderr.write(`[bench ${t}] ${msg}\n`);
}
