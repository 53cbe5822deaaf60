import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { JobPhase } from '../domain/job';
import type { EscrowState } from '../domain/payments';

/** What the job workflow shows of itself (status query, Web UI). */
export interface JobView {
  jobId: string;
  phase: JobPhase;
  attempt: number;
  maxAttempts: number;
  nodeId: string | null;
  failedNodes: string[];
  progress: number;
  epoch: number;
  escrow: EscrowState;
  lastReason: string;
  error: { code: number; message: string } | null;
}

export interface NodeProgress {
  nodeId: string;
  progress?: number;
  epoch?: number;
}

export interface JobOutcomeReport {
  nodeId: string;
  finalMetrics?: Record<string, number>;
  modelWeightsUri?: string;
  modelWeightsHash?: string;
}

export interface JobFailureReport {
  nodeId: string;
  message: string;
}

export interface SettlementReceipt {
  paymentReleased: boolean;
  /** Ledger/transaction reference of the node's payment. */
  txRef: string;
}

export interface CancelReceipt {
  refundIssued: boolean;
  txRef: string;
}

/** Rejection types thrown by update validators (never written to history). */
export const JobRejections = {
  notHolder: 'NodeNotAssigned',
  finished: 'JobFinished',
} as const;

export const jobStatusQuery = defineQuery<JobView>('status');
/** Nodes registered or came back: a queued job should try to match now. */
export const nodesChangedSignal = defineSignal('nodesChanged');
/** The node holding an owed payment registered a wallet: pay it now. */
export const walletRegisteredSignal = defineSignal('walletRegistered');
/** A progress report from the node holding the job (the API stored its details in Postgres). */
export const progressSignal = defineSignal<[NodeProgress]>('progress');
/** NotifyJobAccepted: the node started the job (P2P SendJob arrived). */
export const acceptedUpdate = defineUpdate<{ acknowledged: boolean }, [{ nodeId: string }]>('accepted');
/**
 * The same acceptance when no worker took the update in time (a worker outage or rollout): Temporal keeps a signal
 * until a worker runs, an update it does not. Ignored unless that node holds the job.
 */
export const acceptedSignal = defineSignal<[{ nodeId: string }]>('acceptedLate');
/** The node finished the job; resolves once the payment is released. */
export const completeUpdate = defineUpdate<SettlementReceipt, [JobOutcomeReport]>('complete');
/** The node failed the job; it is retried elsewhere or fails for good. */
export const failUpdate = defineUpdate<{ acknowledged: boolean }, [JobFailureReport]>('fail');
/** The client cancels; resolves once the refund is issued. */
export const cancelUpdate = defineUpdate<CancelReceipt, [{ reason: string }]>('cancel');
