import type { Config } from '../config';
import type { JobWorkflowOptions } from '../workflows/job-workflow';

/** The settings every new job workflow starts with. */
export function jobWorkflowOptions(config: Config): JobWorkflowOptions {
  return {
    heartbeatTimeoutMs: config.jobs.heartbeatTimeoutMs,
    maxAttempts: config.jobs.maxAttempts,
    maxRuntimeMs: config.jobs.maxRuntimeMs,
    requeueIntervalMs: config.jobs.requeueIntervalMs,
    assignTimeoutMs: config.nodes.assignTimeoutMs,
    historyEventLimit: 10_000,
  };
}
