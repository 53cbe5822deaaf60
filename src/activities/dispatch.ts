import * as grpc from '@grpc/grpc-js';
import { ApplicationFailure } from '@temporalio/common';
import type { JobSpec } from '../domain/job';
import { DEVICE_TYPES, JOB_TYPES, PRIORITIES, StatusCode } from '../domain/job';
import { unitsToTokens } from '../domain/money';
import { loadProtocol } from '../protocol/load';
import type { AssignJobRequest, AssignJobResponse, JobConfig } from '../protocol/types';
import type { Transition } from '../db/jobs-repo';

export interface DispatchDeps {
  timeoutMs: number;
  tokenDecimals: number;
  /** Node endpoints to keep a client open to (default 1024). */
  maxNodeClients?: number;
}

export interface DispatchInput {
  jobId: string;
  nodeId: string;
  assignEndpoint: string;
  spec: JobSpec;
}

export type DispatchResult = { accepted: true } | { accepted: false; reason: string; code: number };

/** Error type of a node that could not be reached; retried, then the workflow tries another node. */
export const NODE_UNREACHABLE = 'NodeUnreachable';

/**
 * The JobConfig a node receives. Jobs reach the node's code from the Engine over P2P (SendJob carries the
 * full config), so the dataset travels as `remote://…`: a shipping node then holds the assignment for the
 * Engine instead of starting a second, local run of the same job.
 */
export function toAssignedJobConfig(spec: JobSpec, tokenDecimals: number): JobConfig {
  return {
    job_id: spec.jobId,
    job_type: JOB_TYPES.indexOf(spec.jobType),
    priority: PRIORITIES.indexOf(spec.priority),
    model_definition: spec.modelDefinition,
    hyperparameters: spec.hyperparameters,
    dataset_uri: spec.datasetUri.startsWith('remote://') ? spec.datasetUri : `remote://${spec.datasetUri}`,
    batch_size: spec.batchSize,
    epochs: spec.epochs,
    required_device: DEVICE_TYPES.indexOf(spec.requiredDevice),
    estimated_memory: String(spec.estimatedMemory),
    estimated_duration: String(spec.estimatedDuration),
    payment_amount: unitsToTokens(BigInt(spec.paymentUnits), tokenDecimals),
    payment_address: spec.paymentAddress,
    escrow_tx_hash: spec.escrowTxHash,
    reservation_duration_minutes: spec.reservationDurationMinutes,
  };
}

/** The activity that offers a job to a node with NodeService.AssignJob on the node's own endpoint. */
export function createDispatchActivities(deps: DispatchDeps) {
  const { NodeService } = loadProtocol();
  /**
   * One client per node endpoint, the least recently used first. Endpoints are what nodes register, so the map is
   * bounded: past `maxNodeClients`, idle clients of the endpoints offered nothing for longest are closed.
   */
  const clients = new Map<string, { client: grpc.Client; inFlight: number }>();
  const maxClients = deps.maxNodeClients ?? 1024;

  function clientFor(endpoint: string): { client: grpc.Client; inFlight: number } {
    let entry = clients.get(endpoint);
    if (entry) {
      clients.delete(endpoint); // to the end: the most recently used
    } else {
      entry = { client: new NodeService(endpoint, grpc.credentials.createInsecure()), inFlight: 0 };
    }
    clients.set(endpoint, entry);
    for (const [oldest, e] of clients) {
      if (clients.size <= maxClients) break;
      if (e.inFlight > 0 || e === entry) continue;
      e.client.close();
      clients.delete(oldest);
    }
    return entry;
  }

  /**
   * Offers the job to the node. A refusal is a result, not an error.
   * @throws NodeUnreachable (retryable) when the node cannot be reached in time.
   */
  async function dispatchToNode(input: DispatchInput): Promise<DispatchResult> {
    const request: AssignJobRequest = {
      node_id: input.nodeId,
      job: toAssignedJobConfig(input.spec, deps.tokenDecimals),
      authorization_token: '',
    };
    const entry = clientFor(input.assignEndpoint);
    const client = entry.client as grpc.Client & {
      AssignJob(
        req: AssignJobRequest,
        opts: grpc.CallOptions,
        cb: (err: grpc.ServiceError | null, res: AssignJobResponse) => void,
      ): void;
    };
    let response: AssignJobResponse;
    entry.inFlight += 1;
    try {
      response = await new Promise<AssignJobResponse>((resolve, reject) =>
        client.AssignJob(request, { deadline: Date.now() + deps.timeoutMs }, (err, res) => (err ? reject(err) : resolve(res))),
      );
    } catch (err) {
      const e = err as grpc.ServiceError;
      if (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED) {
        throw ApplicationFailure.retryable(`node ${input.nodeId} unreachable at ${input.assignEndpoint}: ${e.details}`, NODE_UNREACHABLE);
      }
      return { accepted: false, reason: `AssignJob failed: ${grpc.status[e.code] ?? e.code} ${e.details ?? e.message}`, code: 502 };
    } finally {
      entry.inFlight -= 1;
    }
    if (response.status === StatusCode.SUCCESS && response.accepted) return { accepted: true };
    return {
      accepted: false,
      reason: response.error?.message || `node refused the job (status ${response.status})`,
      code: response.error?.code || 409,
    };
  }

  function close(): void {
    for (const e of clients.values()) e.client.close();
    clients.clear();
  }

  /** The endpoints with an open client, the least recently used first. */
  const openClients = () => [...clients.keys()];
  return { activities: { dispatchToNode }, close, openClients };
}

/**
 * Offers the job to the node and, when it accepts, records the assignment: one local activity, so the workflow's
 * first task takes one round less between a match and "assigned". A retry after the record failed offers the job
 * again: a node holds an offered job by its id (a shipping node keeps the latest offer), and the record is
 * idempotent per sequence number.
 */
export function createAssignActivity(deps: {
  dispatchToNode(input: DispatchInput): Promise<DispatchResult>;
  recordTransition(t: Transition): Promise<void>;
  /** Notes on the job that the node did not take it (see jobs.refused_nodes); optional for tests without a registry. */
  recordRefusal?(jobId: string, nodeId: string): Promise<void>;
}) {
  async function assignToNode(input: DispatchInput & { assigned: Transition }): Promise<DispatchResult> {
    const { assigned, ...offer } = input;
    let result: DispatchResult;
    try {
      result = await deps.dispatchToNode(offer);
    } catch (err) {
      // Unreachable: the workflow counts it as a refusal once the retries give up (an assignment clears it).
      await deps.recordRefusal?.(offer.jobId, offer.nodeId).catch(() => undefined);
      throw err;
    }
    if (result.accepted) await deps.recordTransition(assigned);
    else await deps.recordRefusal?.(offer.jobId, offer.nodeId);
    return result;
  }
  return { assignToNode };
}
