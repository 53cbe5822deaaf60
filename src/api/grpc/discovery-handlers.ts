import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ValidationError } from '../../domain/errors';
import { DEVICE_TYPES } from '../../domain/job';
import { deviceMemory, type DeviceCapsSpec } from '../../domain/node';
import type { DeviceCaps, NodeInfo, NodePricing, Version } from '../../protocol/types';
import type { DiscoveredNode, DiscoveryService, DiscoverySort } from '../../services/discovery-service';
import { sendRefusalMetadata, type ProtocolFailure } from './errors';
import { deviceTypeOf, int64, optionalText, requireId } from './mappers';
import { unary } from './unary';

export interface DiscoveryHandlerDeps {
  discovery: DiscoveryService;
  log: Logger;
}

/** Requests as proto-loader presents them (node.proto). */
interface ListNodesRequest {
  page_size: number;
  page_token: string;
  online_only: boolean;
  filter_device: number;
  filter_region: string;
  min_price_per_hour: number;
  max_price_per_hour: number;
  sort_by: number;
  sort_descending: boolean;
}
interface FindNodesRequest {
  required_device: number;
  min_memory: string;
  min_reputation: number;
  preferred_region: string;
  max_results: number;
  max_price_per_hour: number;
  max_price_usd: number;
  preferred_billing: number;
  require_free_tier: boolean;
  min_vram: string;
  min_compute_score: number;
  min_stake: number;
  allowed_regions: string[];
  blocked_regions: string[];
  sort_by: number;
}
interface GetNodeInfoRequest {
  node_id: string;
}

/** FindNodesRequest.SortBy by value. */
const SORT_BY: readonly DiscoverySort[] = ['price', 'performance', 'reputation', 'availability'];
/** NodePricing.BillingModel: HOURLY, PER_EPOCH, PER_JOB, PER_INFERENCE. */
const BILLING_MODELS = 4;
const MAX_REGIONS = 256;
/** The server charges for at least this many minutes (estimateCostUnits). */
const MINIMUM_DURATION_MINUTES = 10;

function sortBy(value: number, field: string): DiscoverySort {
  const sort = SORT_BY[value];
  if (!Number.isInteger(value) || !sort) throw new ValidationError(field, `has no value ${value} (0 price, 1 performance, 2 reputation, 3 availability)`);
  return sort;
}

/** A double that bounds a filter: finite and not negative; 0 means "no bound". */
function bound(value: number, field: string): number {
  if (!Number.isFinite(value) || value < 0) throw new ValidationError(field, 'must be a non-negative number');
  return value;
}

/** An int32 count where 0 means "the default". */
function count(value: number, field: string): number {
  if (!Number.isInteger(value) || value < 0) throw new ValidationError(field, 'must not be negative');
  return value;
}

function regions(values: string[] | undefined, field: string): string[] {
  const list = values ?? [];
  if (list.length > MAX_REGIONS) throw new ValidationError(field, `has more than ${MAX_REGIONS} entries`);
  return list.map((r, i) => {
    const region = optionalText(r, `${field}[${i}]`, 128);
    if (!region.trim()) throw new ValidationError(`${field}[${i}]`, 'is empty');
    return region;
  });
}

/** A price range: absent (0) ends are open; a minimum above the maximum matches nothing and is refused. */
function priceRange(min: number, max: number) {
  const range = { minPricePerHour: bound(min, 'min_price_per_hour'), maxPricePerHour: bound(max, 'max_price_per_hour') };
  if (range.minPricePerHour && range.maxPricePerHour && range.minPricePerHour > range.maxPricePerHour) {
    throw new ValidationError('min_price_per_hour', `${range.minPricePerHour} is above max_price_per_hour ${range.maxPricePerHour}`);
  }
  return range;
}

const unixSeconds = (d: Date) => String(Math.floor(d.getTime() / 1000));
const finite = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0);
const int = (v: unknown) => (typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : 0);

function toDeviceCaps(d: Partial<DeviceCapsSpec>): DeviceCaps {
  return {
    device_type: Math.max(0, DEVICE_TYPES.indexOf(d.deviceType ?? 'UNKNOWN')),
    device_name: d.deviceName ?? '',
    memory_total: String(int(d.memoryTotal)),
    memory_available: String(int(d.memoryAvailable)),
    compute_units: int(d.computeUnits),
    supports_fp64: !!d.supportsFp64,
    supports_fp16: !!d.supportsFp16,
    gpu_model: d.gpuModel ?? '',
    vram_total: String(int(d.vramTotal)),
    vram_available: String(int(d.vramAvailable)),
    driver_version: d.driverVersion ?? '',
    cuda_version: d.cudaVersion ?? '',
    pcie_generation: int(d.pcieGeneration),
    pcie_lanes: int(d.pcieLanes),
    compute_capability: finite(d.computeCapability),
  };
}

const isAccelerator = (d: Partial<DeviceCapsSpec>) => d.deviceType !== 'CPU' && d.deviceType !== 'UNKNOWN' && d.deviceType !== undefined;

/**
 * Accelerators first, largest memory first; the rest in the order the node reported them. The Engine shows
 * devices[0] as the node's device (type and VRAM), so a node that listed its CPU first must not look GPU-less.
 */
function displayOrder(devices: Partial<DeviceCapsSpec>[]): Partial<DeviceCapsSpec>[] {
  const memory = (d: Partial<DeviceCapsSpec>) => deviceMemory({ vramTotal: int(d.vramTotal), memoryTotal: int(d.memoryTotal) });
  const accelerators = devices.filter(isAccelerator).sort((a, b) => memory(b) - memory(a));
  return [...accelerators, ...devices.filter((d) => !isAccelerator(d))];
}

/** "major.minor.patch[+build]" as stored from the registration, back into a Version. */
function toVersion(text: string | undefined): Version | null {
  if (!text) return null;
  const m = /^(\d+)\.(\d+)\.(\d+)(?:\+(.*))?$/.exec(text);
  return m ? { major: +m[1], minor: +m[2], patch: +m[3], build: m[4] ?? '' } : { major: 0, minor: 0, patch: 0, build: text };
}

/**
 * The node's NodePricing: what it announced, with the server's terms where the server decides — the price it
 * charges (price_per_hour: announced, else the list price), hourly billing unless another model was
 * announced, payment in CYXWIZ, a 10-minute minimum. usd_equivalent is the announced one when positive, else
 * the CYXWIZ price (the same rule as FindNodes' max_price_usd filter, discovery-repo's usdPerHour).
 */
function toPricing(node: DiscoveredNode): NodePricing {
  const announced = node.pricing ?? {};
  const billing = int(announced.billing_model);
  const usd = finite(announced.usd_equivalent);
  return {
    billing_model: billing < BILLING_MODELS ? billing : 0,
    price_per_hour: node.pricePerHour,
    price_per_epoch: finite(announced.price_per_epoch),
    price_per_job_base: finite(announced.price_per_job_base),
    price_per_inference: finite(announced.price_per_inference),
    minimum_charge: finite(announced.minimum_charge),
    minimum_duration_minutes: MINIMUM_DURATION_MINUTES,
    discount_1h_plus: finite(announced.discount_1h_plus),
    discount_24h_plus: finite(announced.discount_24h_plus),
    discount_bulk: finite(announced.discount_bulk),
    usd_equivalent: usd > 0 ? usd : node.pricePerHour,
    price_updated_at: /^\d{1,19}$/.test(String(announced.price_updated_at ?? '')) ? String(announced.price_updated_at) : '0',
    accepts_cyxwiz_token: true,
    accepts_sol: announced.accepts_sol === true,
    accepts_usdc: announced.accepts_usdc === true,
    free_tier_available: announced.free_tier_available === true,
    free_tier_minutes: int(announced.free_tier_minutes),
  };
}

/**
 * A discovered node as the protocol's NodeInfo: reputation_score 0..1, int64 fields as decimal strings,
 * enums as numbers. is_online is liveness (status online and a fresh heartbeat). total_compute_hours (whole
 * hours, rounded down) and uptime_percentage (0..100) as defined in domain/node-stats.ts. average_rating is
 * reputation on a 0..5 scale (as the original server).
 */
export function toNodeInfo(node: DiscoveredNode): NodeInfo {
  const profile = node.profile ?? {};
  return {
    node_id: node.id,
    name: node.name,
    version: toVersion(profile.version),
    devices: displayOrder(node.devices ?? []).map(toDeviceCaps),
    cpu_cores: node.cpuCores,
    ram_total: String(node.ramTotal),
    ram_available: String(node.ramAvailable),
    ip_address: node.ipAddress,
    port: node.port,
    region: node.region,
    compute_score: node.computeScore,
    reputation_score: node.reputation,
    total_jobs_completed: String(node.totalJobsCompleted),
    total_compute_hours: String(node.totalComputeHours),
    average_rating: node.reputation * 5,
    staked_amount: finite(profile.stakedAmount),
    wallet_address: node.walletAddress,
    is_online: node.online,
    last_heartbeat: unixSeconds(node.lastHeartbeat),
    uptime_percentage: node.uptimePercentage,
    supported_formats: profile.supportedFormats ?? [],
    max_model_size: String(int(profile.maxModelSize)),
    supports_terminal_access: !!profile.supportsTerminalAccess,
    available_runtimes: profile.availableRuntimes ?? [],
    pricing: toPricing(node),
  };
}

const EMPTY_PAGE = { nodes: [], next_page_token: '', total_count: 0, online_count: 0, network_avg_price: 0, network_total_compute: 0 };

/** NodeDiscoveryService: what Engines browse. Served without authentication, as the original server did. */
export function createDiscoveryHandlers(deps: DiscoveryHandlerDeps) {
  const { discovery, log } = deps;

  const ListNodes = unary<ListNodesRequest, object>(
    log,
    'ListNodes',
    async (req, call) => {
      try {
        const page = await discovery.list({
          pageSize: count(req.page_size, 'page_size'),
          pageToken: optionalText(req.page_token, 'page_token', 1024),
          onlineOnly: !!req.online_only,
          device: deviceTypeOf(req.filter_device, 'filter_device'),
          region: optionalText(req.filter_region, 'filter_region', 128),
          ...priceRange(req.min_price_per_hour, req.max_price_per_hour),
          sort: sortBy(req.sort_by, 'sort_by'),
          descending: !!req.sort_descending,
        });
        return {
          nodes: page.nodes.map(toNodeInfo),
          next_page_token: page.nextPageToken,
          total_count: page.total,
          online_count: page.online,
          network_avg_price: page.networkAvgPrice,
          network_total_compute: page.networkTotalCompute,
        };
      } catch (err) {
        // ListNodesResponse has no error field: the refusal travels as an empty page, its reason in metadata.
        sendRefusalMetadata(call as grpc.ServerUnaryCall<unknown, unknown>, err);
        throw err;
      }
    },
    () => EMPTY_PAGE,
  );

  const FindNodes = unary<FindNodesRequest, object>(
    log,
    'FindNodes',
    async (req) => {
      if (!Number.isFinite(req.min_reputation) || req.min_reputation < 0 || req.min_reputation > 1) {
        throw new ValidationError('min_reputation', 'must be between 0 and 1 (a fraction, not a percentage)');
      }
      const billing = req.preferred_billing;
      if (!Number.isInteger(billing) || billing < 0 || billing >= BILLING_MODELS) {
        throw new ValidationError('preferred_billing', `has no value ${billing}`);
      }
      const found = await discovery.find({
        device: deviceTypeOf(req.required_device, 'required_device'),
        minRam: int64(req.min_memory, 'min_memory'),
        minDeviceMemory: int64(req.min_vram, 'min_vram'),
        minReputation: req.min_reputation,
        minComputeScore: bound(req.min_compute_score, 'min_compute_score'),
        minStake: bound(req.min_stake, 'min_stake'),
        preferredRegion: optionalText(req.preferred_region, 'preferred_region', 128),
        // A region in both lists is blocked (the deny list wins).
        allowedRegions: regions(req.allowed_regions, 'allowed_regions'),
        blockedRegions: regions(req.blocked_regions, 'blocked_regions'),
        maxPricePerHour: bound(req.max_price_per_hour, 'max_price_per_hour'),
        maxPriceUsd: bound(req.max_price_usd, 'max_price_usd'),
        billingModel: billing,
        requireFreeTier: !!req.require_free_tier,
        maxResults: count(req.max_results, 'max_results'),
        sort: sortBy(req.sort_by, 'sort_by'),
      });
      return {
        nodes: found.nodes.map(toNodeInfo),
        total_matching: found.totalMatching,
        avg_price_per_hour: found.avgPricePerHour,
        min_price_per_hour: found.minPricePerHour,
        max_price_per_hour: found.maxPricePerHour,
      };
    },
    (f: ProtocolFailure) => ({ nodes: [], total_matching: 0, avg_price_per_hour: 0, min_price_per_hour: 0, max_price_per_hour: 0, error: f.error }),
  );

  const GetNodeInfo = unary<GetNodeInfoRequest, object>(
    log,
    'GetNodeInfo',
    async (req) => ({ info: toNodeInfo(await discovery.get(requireId(req.node_id, 'node_id'))) }),
    (f: ProtocolFailure) => ({ info: null, error: f.error }),
  );

  return { ListNodes, FindNodes, GetNodeInfo };
}
