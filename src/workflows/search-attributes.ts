import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** Typed search attributes of job workflows: operators filter on them in the Web UI and `temporal workflow list`. */
export const JobSearchAttributes = {
  status: defineSearchAttributeKey('JobStatus', SearchAttributeType.KEYWORD),
  nodeId: defineSearchAttributeKey('NodeId', SearchAttributeType.KEYWORD),
  jobType: defineSearchAttributeKey('JobType', SearchAttributeType.KEYWORD),
  deviceType: defineSearchAttributeKey('DeviceType', SearchAttributeType.KEYWORD),
  submitter: defineSearchAttributeKey('Submitter', SearchAttributeType.KEYWORD),
  escrowState: defineSearchAttributeKey('EscrowState', SearchAttributeType.KEYWORD),
  attempt: defineSearchAttributeKey('Attempt', SearchAttributeType.INT),
} as const;

/** Name → type, as `temporal server start-dev --search-attribute` and the operator API register them. */
export const SEARCH_ATTRIBUTE_TYPES: Record<string, 'Keyword' | 'Int'> = {
  JobStatus: 'Keyword',
  NodeId: 'Keyword',
  JobType: 'Keyword',
  DeviceType: 'Keyword',
  Submitter: 'Keyword',
  EscrowState: 'Keyword',
  Attempt: 'Int',
};
