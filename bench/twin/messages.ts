import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';

/** Input of the bare twin: what it needs to look like a job to Temporal (ids and an amount). */
export interface TwinJobInput {
  jobId: string;
  nodeId: string;
  paymentUnits: string;
}

export const twinStatus = defineQuery<{ phase: string; progress: number }>('status');
export const twinProgress = defineSignal<[{ nodeId: string; progress?: number; epoch?: number }]>('progress');
/** Resolves once the twin is "assigned" (its dispatch activity and assigned transition are done). */
export const twinAccepted = defineUpdate<{ acknowledged: boolean }, [{ nodeId: string }]>('accepted');
export const twinComplete = defineUpdate<{ paymentReleased: boolean; txRef: string }, [{ nodeId: string }]>('complete');
