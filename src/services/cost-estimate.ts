import { ValidationError } from '../domain/errors';
import { unitsToTokenString, unitsToTokens } from '../domain/money';
import { estimateCostUnits, estimateTrainingSeconds, listPricePerHour, NODE_TIERS, type NodeTier } from '../domain/pricing';
import type { DiscoveryService } from './discovery-service';

export interface CostEstimateRequest {
  modelType: string;
  epochs: number;
  datasetSize: number;
  /** basic, premium or enterprise (any case); '' is basic. */
  nodeTier: string;
}

export interface CostEstimate {
  /** Token smallest units, from estimateCostUnits: what a job of this size would escrow. */
  units: bigint;
  tokens: number;
  minutes: number;
  tier: NodeTier;
  pricePerHour: number;
  /** How many available nodes of the tier the price is the mean of; 0 when it is the tier's reference list price. */
  pricedFrom: number;
  breakdown: string;
}

/**
 * WalletService.EstimateJobCost with the cost formula jobs are matched and charged by (estimateCostUnits): the
 * expected run time of the model (estimateTrainingSeconds) at the mean hourly price of the nodes of the tier a
 * job could be placed on now (FindNodes' statistics), or at the list price of the tier's reference hardware
 * when none is available.
 */
export function createCostEstimator(deps: { discovery: Pick<DiscoveryService, 'find'>; tokenDecimals: number }) {
  async function estimate(req: CostEstimateRequest): Promise<CostEstimate> {
    if (!Number.isInteger(req.epochs) || req.epochs < 0) throw new ValidationError('epochs', `must be a non-negative integer, got ${req.epochs}`);
    if (!Number.isFinite(req.datasetSize) || req.datasetSize < 0) throw new ValidationError('dataset_size', `must not be negative, got ${req.datasetSize}`);
    if ((req.modelType ?? '').length > 256 || /[\u0000-\u001f\u007f]/.test(req.modelType ?? '')) {
      throw new ValidationError('model_type', 'must be at most 256 printable characters');
    }
    const tierName = (req.nodeTier ?? '').trim().toLowerCase() || 'basic';
    if (!Object.hasOwn(NODE_TIERS, tierName)) {
      throw new ValidationError('node_tier', `must be one of ${Object.keys(NODE_TIERS).join(', ')} (empty is basic), got "${req.nodeTier}"`);
    }
    const tier = tierName as NodeTier;
    const { device, reference } = NODE_TIERS[tier];
    const run = estimateTrainingSeconds(req.modelType, req.datasetSize, req.epochs);
    const market = await deps.discovery.find({
      device,
      preferredRegion: '',
      allowedRegions: [],
      blockedRegions: [],
      requireFreeTier: false,
      maxResults: 1,
      sort: 'price',
    });
    const pricedFrom = market.totalMatching;
    // To the micro-token, as estimateCostUnits charges it (a mean of prices is rarely a round number).
    const pricePerHour = Math.round((pricedFrom > 0 ? market.avgPricePerHour : listPricePerHour(reference)) * 1e6) / 1e6;
    const units = estimateCostUnits(pricePerHour, run.seconds, deps.tokenDecimals);
    const d = deps.tokenDecimals;
    const breakdown = [
      `run time: ${run.minutesPerEpoch} min per epoch per 10,000 samples (${req.modelType || 'unnamed model'}) × dataset ${run.datasetFactor} × ${run.epochs} epochs = ${run.seconds} s`,
      pricedFrom > 0
        ? `price: ${pricePerHour} CYXWIZ/h, the mean of ${pricedFrom} available ${tier} (${device}) nodes`
        : `price: ${pricePerHour} CYXWIZ/h, the list price of a reference ${tier} (${device}) node (none available now)`,
      `cost: ceil(price × 10^${d} × max(${run.seconds} s, 600 s) / 3600) = ${units} units = ${unitsToTokenString(units, d)} CYXWIZ`,
    ].join('\n');
    return { units, tokens: unitsToTokens(units, d), minutes: run.seconds / 60, tier, pricePerHour, pricedFrom, breakdown };
  }

  return { estimate };
}

export type CostEstimator = ReturnType<typeof createCostEstimator>;
