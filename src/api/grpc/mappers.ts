import { getBase58Encoder } from '@solana/kit';
import { randomUUID } from 'node:crypto';
import type { JobRow } from '../../db/jobs-repo';
import type { NodeRegistration } from '../../db/nodes-repo';
import { ValidationError } from '../../domain/errors';
import { isId } from '../../domain/ids';
import {
  DEVICE_TYPES,
  JOB_TYPES,
  phaseToStatusCode,
  PRIORITIES,
  type DeviceType,
  type JobSpec,
} from '../../domain/job';
import { tokensToUnits } from '../../domain/money';
import { nodeHost } from '../../domain/endpoint';
import type { DeviceCapsSpec } from '../../domain/node';
import type { DeviceCaps, Int64, JobConfig, JobStatus, NodeInfo } from '../../protocol/types';
import { walletAddress } from '../../services/wallet-service';

const MAX_TEXT = 4096;
/** A model graph or script travels in every workflow payload; Temporal refuses payloads over 2 MB. */
const MAX_MODEL_DEFINITION = 1024 * 1024;
/** Hyperparameters of one job. */
const MAX_HYPERPARAMETERS = 256;
/**
 * A whole job as JSON (its workflow's input, its row, what AssignJob carries): under Temporal's 2 MB payload
 * limit with room to spare, whatever escaping the model definition needs.
 */
const MAX_JOB_SPEC_BYTES = 1536 * 1024;
/** Devices of one node (a GPU server has at most a few dozen): every NodeInfo the Engine browses carries them. */
const MAX_DEVICES = 64;
/** Metric names kept of one report (each report's merge into the job's). */
export const MAX_METRICS = 100;
/** Control characters other than tab and newlines (Postgres text cannot hold NUL at all). */
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;
/** A shipping node listens for P2P on 50052 (and is registered with it); 0 means "the default". */
export const DEFAULT_NODE_PORT = 50052;

export function optionalText(value: string | undefined, field: string, max = MAX_TEXT): string {
  const v = (value ?? '').trim();
  if (v.length > max) throw new ValidationError(field, `is longer than ${max} characters`);
  if (CONTROL.test(v)) throw new ValidationError(field, 'contains control characters');
  return v;
}

export function requireText(value: string | undefined, field: string, max = MAX_TEXT): string {
  const v = optionalText(value, field, max);
  if (!v) throw new ValidationError(field, 'is required');
  return v;
}

/** A wallet to be paid at: empty (none: its payments are owed until it registers one) or a Solana address. */
export function optionalWallet(value: string | undefined, field: string): string {
  const v = optionalText(value, field, 128);
  if (v && walletAddress(v, field).toBase58() !== v) throw new ValidationError(field, 'is not a base58 Solana address');
  return v;
}

/** An id of a job or node: 1-128 letters, digits, `_ . : -`, starting with a letter or digit. */
export function requireId(value: string | undefined, field: string): string {
  const v = requireText(value, field, 128);
  if (!isId(v)) throw new ValidationError(field, 'must be 1-128 letters, digits, _ . : - (starting with a letter or digit)');
  return v;
}

/** An id from a request, to repeat in a reply that refuses it: itself when well-formed, else empty. */
export function echoId(value: unknown): string {
  return typeof value === 'string' && value.length <= 128 && isId(value) ? value : '';
}

/** An int64 field (decimal string on the wire) as a non-negative safe integer. */
export function int64(value: Int64 | number | undefined, field: string): number {
  const n = Number(value ?? 0);
  if (!Number.isSafeInteger(n)) throw new ValidationError(field, 'is not an integer in range');
  if (n < 0) throw new ValidationError(field, 'must not be negative');
  return n;
}

function enumValue<T extends string>(values: readonly T[], value: number, field: string, allowUnknown: boolean): T {
  if (!Number.isInteger(value) || value < 0 || value >= values.length) {
    throw new ValidationError(field, `has no value ${value}`);
  }
  if (!allowUnknown && value === 0) throw new ValidationError(field, `must be set (one of ${values.slice(1).join(', ')})`);
  return values[value];
}

export const deviceTypeOf = (value: number, field: string): DeviceType => enumValue(DEVICE_TYPES, value, field, true);

/**
 * SubmitJobRequest.config → a validated job. Fields the nodes require (job type, epochs, batch size,
 * dataset) are required here, so no node ever refuses a job for being malformed.
 * @throws ValidationError naming the field as `config.<field>`.
 */
export function toJobSpec(config: JobConfig | null | undefined, tokenDecimals: number): JobSpec {
  if (!config) throw new ValidationError('config', 'is required');
  const jobId = (config.job_id ?? '').trim() ? requireId(config.job_id, 'config.job_id') : '';
  if (!Number.isInteger(config.batch_size) || config.batch_size <= 0) {
    throw new ValidationError('config.batch_size', 'must be greater than zero');
  }
  if (!Number.isInteger(config.epochs) || config.epochs <= 0) throw new ValidationError('config.epochs', 'must be greater than zero');
  if (config.reservation_duration_minutes < 0) {
    throw new ValidationError('config.reservation_duration_minutes', 'must not be negative');
  }
  const hyperparameters: Record<string, string> = {};
  const given = Object.entries(config.hyperparameters ?? {});
  if (given.length > MAX_HYPERPARAMETERS) throw new ValidationError('config.hyperparameters', `has more than ${MAX_HYPERPARAMETERS} entries`);
  for (const [k, v] of given) {
    hyperparameters[optionalText(k, 'config.hyperparameters', 256)] = optionalText(v, `config.hyperparameters.${k}`);
  }
  const spec: JobSpec = {
    jobId: jobId || randomUUID(),
    jobType: enumValue(JOB_TYPES, config.job_type, 'config.job_type', false),
    priority: enumValue(PRIORITIES, config.priority, 'config.priority', true),
    modelDefinition: modelDefinition(config.model_definition),
    hyperparameters,
    datasetUri: requireText(config.dataset_uri, 'config.dataset_uri'),
    batchSize: config.batch_size,
    epochs: config.epochs,
    requiredDevice: deviceTypeOf(config.required_device, 'config.required_device'),
    estimatedMemory: int64(config.estimated_memory, 'config.estimated_memory'),
    estimatedDuration: int64(config.estimated_duration, 'config.estimated_duration'),
    paymentUnits: tokensToUnits(config.payment_amount, tokenDecimals, 'config.payment_amount').toString(),
    paymentAddress: optionalText(config.payment_address, 'config.payment_address', 128),
    escrowTxHash: signature(config.escrow_tx_hash, 'config.escrow_tx_hash'),
    reservationDurationMinutes: config.reservation_duration_minutes,
  };
  const bytes = Buffer.byteLength(JSON.stringify(spec));
  if (bytes > MAX_JOB_SPEC_BYTES) throw new ValidationError('config', `is ${bytes} bytes as JSON; at most ${MAX_JOB_SPEC_BYTES} are taken (model_definition and hyperparameters make most of it)`);
  return spec;
}

/** A Solana transaction signature: base58 of 64 bytes (87 or 88 characters). @throws ValidationError */
const base58 = getBase58Encoder();

/** Whether `value` is a transaction signature: base58 of exactly 64 bytes (86–88 characters may be more or fewer). */
export function isSignature(value: string): boolean {
  return /^[1-9A-HJ-NP-Za-km-z]{86,88}$/.test(value) && base58.encode(value).length === 64;
}

function signature(value: string | undefined, field: string): string {
  const v = optionalText(value, field, 128);
  if (v && !isSignature(v)) throw new ValidationError(field, 'is not a base58 transaction signature (64 bytes)');
  return v;
}

export function modelDefinition(value: string | undefined, field = 'config.model_definition'): string {
  const v = value ?? '';
  if (Buffer.byteLength(v) > MAX_MODEL_DEFINITION) {
    throw new ValidationError(field, `is larger than ${MAX_MODEL_DEFINITION} bytes`);
  }
  if (v.includes('\u0000')) throw new ValidationError(field, 'contains NUL characters');
  return v;
}

const unixSeconds = (d: Date | null | undefined) => (d ? String(Math.floor(d.getTime() / 1000)) : '0');

/** A job row as the protocol's JobStatus. */
export function toJobStatus(job: Omit<JobRow, 'config'>): JobStatus {
  return {
    job_id: job.id,
    status: phaseToStatusCode(job.status),
    progress: job.progress,
    current_node_id: job.assignedNodeId ?? '',
    start_time: unixSeconds(job.startedAt),
    end_time: unixSeconds(job.endedAt),
    error: job.errorMessage ? { code: job.errorCode ?? 500, message: job.errorMessage } : null,
    metrics: job.metrics,
    current_epoch: job.currentEpoch,
  };
}

function devices(given: DeviceCaps[]): DeviceCapsSpec[] {
  if (given.length > MAX_DEVICES) throw new ValidationError('info.devices', `has more than ${MAX_DEVICES} devices`);
  return given.map((d, i) => toDevice(d, `info.devices[${i}]`));
}

function toDevice(d: DeviceCaps, field: string): DeviceCapsSpec {
  return {
    deviceType: deviceTypeOf(d.device_type, `${field}.device_type`),
    deviceName: optionalText(d.device_name, `${field}.device_name`, 256),
    memoryTotal: int64(d.memory_total, `${field}.memory_total`),
    memoryAvailable: int64(d.memory_available, `${field}.memory_available`),
    computeUnits: Math.max(0, d.compute_units | 0),
    supportsFp64: !!d.supports_fp64,
    supportsFp16: !!d.supports_fp16,
    gpuModel: optionalText(d.gpu_model, `${field}.gpu_model`, 256),
    vramTotal: int64(d.vram_total, `${field}.vram_total`),
    vramAvailable: int64(d.vram_available, `${field}.vram_available`),
    driverVersion: optionalText(d.driver_version, `${field}.driver_version`, 128),
    cudaVersion: optionalText(d.cuda_version, `${field}.cuda_version`, 128),
    pcieGeneration: d.pcie_generation | 0,
    pcieLanes: d.pcie_lanes | 0,
    computeCapability: Number.isFinite(d.compute_capability) ? d.compute_capability : 0,
  };
}

/**
 * RegisterNodeRequest.info → a registration. A missing ip_address falls back to the caller's address.
 * @throws ValidationError naming the field as `info.<field>`.
 */
export function toNodeRegistration(info: NodeInfo | null | undefined, peerIp: string): { claimedId: string; reg: NodeRegistration } {
  if (!info) throw new ValidationError('info', 'is required');
  // AssignJob goes to the registered port + 3 (NODE_ASSIGN_PORT_OFFSET), which must be a port too.
  if (!Number.isInteger(info.port) || info.port < 0 || info.port > 65532) {
    throw new ValidationError('info.port', 'must be a TCP port (0-65532: AssignJob goes to port + 3)');
  }
  if (info.cpu_cores < 0) throw new ValidationError('info.cpu_cores', 'must not be negative');
  const given = optionalText(info.ip_address, 'info.ip_address', 255);
  const ipAddress = nodeHost(given || peerIp);
  if (!ipAddress) {
    throw new ValidationError('info.ip_address', given ? 'must be an IPv4 or IPv6 address or a host name' : 'is required (the caller\'s address is not one)');
  }
  const claimedId = optionalText(info.node_id, 'info.node_id', 128);
  const v = info.version;
  return {
    claimedId,
    reg: {
      name: optionalText(info.name, 'info.name', 256) || `CyxWiz-Node-${claimedId.slice(0, 8) || ipAddress}`,
      cpuCores: info.cpu_cores,
      ramTotal: int64(info.ram_total, 'info.ram_total'),
      ramAvailable: int64(info.ram_available, 'info.ram_available'),
      devices: devices(info.devices ?? []),
      ipAddress,
      port: info.port || DEFAULT_NODE_PORT,
      region: optionalText(info.region, 'info.region', 128),
      walletAddress: optionalWallet(info.wallet_address, 'info.wallet_address'),
      pricing: announcedPricing(info.pricing),
      profile: {
        version: v ? `${v.major}.${v.minor}.${v.patch}${v.build ? `+${optionalText(v.build, 'info.version.build', 128)}` : ''}` : '',
        supportedFormats: names(info.supported_formats, 'info.supported_formats'),
        maxModelSize: int64(info.max_model_size, 'info.max_model_size'),
        supportsTerminalAccess: !!info.supports_terminal_access,
        availableRuntimes: names(info.available_runtimes, 'info.available_runtimes'),
        stakedAmount: Number.isFinite(info.staked_amount) ? info.staked_amount : 0,
      },
    },
  };
}

/** The highest hourly price a node may announce, in whole CYXWIZ (far above any real one; keeps sums and means finite). */
export const MAX_PRICE_PER_HOUR = 1_000_000;

/**
 * A node's announced NodePricing, kept whole when announced (its billing model, free tier and other terms count
 * in discovery even without an hourly price; a price_per_hour of 0 means the list price is charged).
 * @throws ValidationError
 */
function announcedPricing(pricing: NodeInfo['pricing']): (Record<string, unknown> & { price_per_hour: number }) | undefined {
  if (!pricing) return undefined;
  const perHour = pricing.price_per_hour ?? 0;
  if (!Number.isFinite(perHour) || perHour < 0) throw new ValidationError('info.pricing.price_per_hour', 'must be a finite number, 0 or more');
  if (perHour > MAX_PRICE_PER_HOUR) throw new ValidationError('info.pricing.price_per_hour', `must be at most ${MAX_PRICE_PER_HOUR} CYXWIZ per hour`);
  return { ...pricing, price_per_hour: perHour };
}

/** A short list of short names (formats, runtimes): at most 64 of at most 128 characters each. */
function names(values: string[] | undefined, field: string): string[] {
  const list = values ?? [];
  if (list.length > 64) throw new ValidationError(field, 'has more than 64 entries');
  return list.map((v, i) => optionalText(v, `${field}[${i}]`, 128));
}

/** The caller's IP from a grpc-js peer string ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678", "1.2.3.4:5678"). */
export function peerIp(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const bracketed = /^\[([^\]]+)\]:\d+$/.exec(p);
  if (bracketed) return bracketed[1];
  const idx = p.lastIndexOf(':');
  return idx > 0 ? p.slice(0, idx) : p;
}

/** A progress value in 0..1. @throws ValidationError */
export function progressValue(value: number, field: string): number {
  if (!Number.isFinite(value) || value < 0 || value > 1) throw new ValidationError(field, 'must be between 0 and 1');
  return value;
}

/**
 * A report's metrics, without the values that are not finite numbers: a training that diverged reports a NaN
 * loss, and its report (its completion above all) must still count; JSON cannot hold NaN, so those are left out.
 */
export function metricsValue(metrics: Record<string, number> | undefined, field: string): Record<string, number> {
  const out: Record<string, number> = {};
  // Past MAX_METRICS names the rest are left out, like the values that are not finite: the report still counts.
  for (const [k, v] of Object.entries(metrics ?? {}).slice(0, MAX_METRICS)) {
    optionalText(k, field, 256);
    if (Number.isFinite(v)) out[k] = v;
  }
  return out;
}
