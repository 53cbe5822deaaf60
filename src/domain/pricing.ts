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

/** The least time a job is costed at, whatever its estimated duration (none: this). */
export const MINIMUM_BILLED_S = 600;

/**
 * The cost of running a job, in the token's smallest units: the node's hourly price × the job's estimated
 * hours (at least `minimumMinutes`), rounded up to a whole unit. One formula for SubmitJob checks, FindNodes
 * price statistics and WalletService.EstimateJobCost.
 *
 *   cost = ceil(price_per_hour × 10^decimals × max(duration_s, minimum_minutes × 60) / 3600)
 */
export function estimateCostUnits(pricePerHour: number, durationSeconds: number, decimals: number, minimumMinutes = MINIMUM_BILLED_S / 60): bigint {
  if (!(pricePerHour >= 0) || !Number.isFinite(pricePerHour)) throw new RangeError('price must be a finite non-negative number');
  const seconds = Math.max(durationSeconds, minimumMinutes * 60);
  // micro-tokens per hour as an integer keeps the arithmetic exact for 6-decimal prices
  const microPerHour = BigInt(Math.round(pricePerHour * 1e6));
  const scale = 10n ** BigInt(decimals);
  const numerator = microPerHour * scale * BigInt(Math.ceil(seconds));
  const denominator = 1_000_000n * 3600n;
  return (numerator + denominator - 1n) / denominator;
}

/**
 * Minutes one epoch over 10,000 samples takes, by model family: the original server's per-model base (§4.8 of the
 * protocol notes) × 10, its minutes per unit of cost. Other models take DEFAULT_MINUTES_PER_EPOCH.
 */
export const MINUTES_PER_EPOCH: Readonly<Record<string, number>> = {
  MNIST: 1,
  SimpleNN: 1,
  'ResNet-18': 10,
  'VGG-16': 10,
  'ResNet-50': 100,
  'GPT-2': 100,
  'GPT-3': 500,
  'BERT-Large': 500,
};
export const DEFAULT_MINUTES_PER_EPOCH = 5;

/**
 * How long a training job is expected to run, for an estimate before any node is chosen:
 *
 *   seconds = minutes_per_epoch(model) × max(dataset_size / 10,000, 0.1) × max(epochs, 1) × 60
 */
export function estimateTrainingSeconds(modelType: string, datasetSize: number, epochs: number) {
  // Own keys only: a model named "constructor" or "__proto__" is an unknown model, not Object's.
  const minutesPerEpoch = Object.hasOwn(MINUTES_PER_EPOCH, modelType) ? MINUTES_PER_EPOCH[modelType] : DEFAULT_MINUTES_PER_EPOCH;
  const datasetFactor = Math.max(datasetSize / 10_000, 0.1);
  const epochCount = Math.max(epochs, 1);
  return { seconds: Math.ceil(minutesPerEpoch * datasetFactor * epochCount * 60), minutesPerEpoch, datasetFactor, epochs: epochCount };
}

/**
 * WalletService.EstimateJobCost's node tiers, as the device a job of that tier asks for; '' is basic. Each has
 * the hardware whose list price stands in when no node of the tier is available to price from.
 */
export const NODE_TIERS = {
  basic: { device: 'CPU', reference: { devices: [], cpuCores: 8 } },
  premium: { device: 'OPENCL', reference: { devices: [{ deviceType: 'OPENCL', vramTotal: 8 * GiB, memoryTotal: 0 }], cpuCores: 8 } },
  enterprise: { device: 'CUDA', reference: { devices: [{ deviceType: 'CUDA', vramTotal: 24 * GiB, memoryTotal: 0 }], cpuCores: 16 } },
} as const satisfies Record<string, { device: DeviceType; reference: Parameters<typeof listPricePerHour>[0] }>;
export type NodeTier = keyof typeof NODE_TIERS;
