import type { DeviceType } from './job';
import { deviceMemory, type DeviceCapsSpec } from './node';

const GiB = 2 ** 30;

/**
 * A node's hourly price in whole CYXWIZ when it announced none (shipping nodes never do): the original
 * server's list price — CUDA 0.25 + 0.02 per GiB of VRAM, OpenCL 0.15 + 0.01 per GiB, other devices
 * 0.05 + 0.005 per CPU core — so what the Engine shows matches what a job is charged.
 */
export function listPricePerHour(node: { devices: Pick<DeviceCapsSpec, 'deviceType' | 'vramTotal' | 'memoryTotal'>[]; cpuCores: number }): number {
  const gib = (type: DeviceType) =>
    Math.max(0, ...node.devices.filter((d) => d.deviceType === type).map((d) => deviceMemory(d))) / GiB;
  if (node.devices.some((d) => d.deviceType === 'CUDA')) return round6(0.25 + 0.02 * gib('CUDA'));
  if (node.devices.some((d) => d.deviceType === 'OPENCL')) return round6(0.15 + 0.01 * gib('OPENCL'));
  return round6(0.05 + 0.005 * Math.max(1, node.cpuCores));
}

const round6 = (x: number) => Math.round(x * 1e6) / 1e6;

/** Compute score: what the hardware can do, independent of reputation (cores, RAM, accelerator memory). */
export function computeScore(node: { devices: Pick<DeviceCapsSpec, 'deviceType' | 'vramTotal' | 'memoryTotal'>[]; cpuCores: number; ramTotal: number }): number {
  const accel = node.devices
    .filter((d) => d.deviceType !== 'CPU' && d.deviceType !== 'UNKNOWN')
    .reduce((best, d) => Math.max(best, (d.deviceType === 'CUDA' ? 500 : 200) + (deviceMemory(d) / GiB) * (d.deviceType === 'CUDA' ? 20 : 15)), 0);
  return Math.round(node.cpuCores * 10 + (node.ramTotal / GiB) * 5 + accel);
}

/**
 * The cost of running a job, in the token's smallest units: the node's hourly price × the job's estimated
 * hours (at least `minimumMinutes`), rounded up to a whole unit. One formula for SubmitJob checks, FindNodes
 * price statistics and WalletService.EstimateJobCost.
 *
 *   cost = ceil(price_per_hour × 10^decimals × max(duration_s, minimum_minutes × 60) / 3600)
 */
export function estimateCostUnits(pricePerHour: number, durationSeconds: number, decimals: number, minimumMinutes = 10): bigint {
  if (!(pricePerHour >= 0) || !Number.isFinite(pricePerHour)) throw new RangeError('price must be a finite non-negative number');
  const seconds = Math.max(durationSeconds, minimumMinutes * 60);
  // micro-tokens per hour as an integer keeps the arithmetic exact for 6-decimal prices
  const microPerHour = BigInt(Math.round(pricePerHour * 1e6));
  const scale = 10n ** BigInt(decimals);
  const numerator = microPerHour * scale * BigInt(Math.ceil(seconds));
  const denominator = 1_000_000n * 3600n;
  return (numerator + denominator - 1n) / denominator;
}
