/**
 * Wire-contract test for proto/*.proto.
 *
 * Every expectation below is transcribed by hand from
 * /work/shared/protocol/CYXWIZ-PROTOCOL.md (section 1: files, services, RPCs,
 * streaming kinds; section 2: messages, field numbers, types, enum values).
 * Real CyxWiz clients are built from the original protos, so any drift in a
 * package, service, method, message or field name, field number, field type,
 * repeated/map-ness or enum value breaks them. This test must fail on any such drift,
 * and also when a message, enum, service or method is added without a row here.
 *
 * Field notation: '<number> <name>: <type>', where <type> is a scalar
 * (string, int32, int64, uint64, double, bool, bytes), a package-relative
 * message/enum name (Error, NodePricing.BillingModel), 'repeated <type>' or
 * 'map<key,value>'.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as protobuf from 'protobufjs';
import * as protoLoader from '@grpc/proto-loader';

const PROTO_DIR = path.join(process.cwd(), 'proto');
const PACKAGE = 'cyxwiz.protocol';

const FILES = [
  'common.proto',
  'job.proto',
  'node.proto',
  'execution.proto',
  'reservation.proto',
  'wallet.proto',
] as const;
type ProtoFile = (typeof FILES)[number];

/** Bare imports per file (section 1 inventory). */
const IMPORTS: Record<ProtoFile, string[]> = {
  'common.proto': [],
  'job.proto': ['common.proto'],
  'node.proto': ['common.proto', 'job.proto'],
  'execution.proto': ['common.proto', 'job.proto'],
  'reservation.proto': ['common.proto', 'job.proto', 'execution.proto'],
  'wallet.proto': ['common.proto'],
};

interface EnumSpec {
  file: ProtoFile;
  name: string; // package-relative, nested enums as 'Outer.Inner'
  values: Record<string, number>;
}

interface MessageSpec {
  file: ProtoFile;
  name: string;
  fields: string[]; // '<number> <name>: <type>'
  oneofs?: Record<string, string[]>;
  note?: string;
}

interface ServiceSpec {
  file: ProtoFile;
  name: string;
  /** Served by the CyxWiz Central Server on :50051. */
  servedByCentral: boolean;
  /** '<Request> -> <Response>', each optionally prefixed with 'stream '. */
  methods: Record<string, string>;
}

// ---------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------
const ENUMS: EnumSpec[] = [
  // common.proto (2.1)
  {
    file: 'common.proto',
    name: 'StatusCode',
    values: {
      STATUS_UNKNOWN: 0,
      STATUS_SUCCESS: 1,
      STATUS_ERROR: 2,
      STATUS_PENDING: 3,
      STATUS_IN_PROGRESS: 4,
      STATUS_COMPLETED: 5,
      STATUS_FAILED: 6,
      STATUS_CANCELLED: 7,
    },
  },
  {
    file: 'common.proto',
    name: 'DeviceType',
    values: {
      DEVICE_UNKNOWN: 0,
      DEVICE_CPU: 1,
      DEVICE_CUDA: 2,
      DEVICE_OPENCL: 3,
      DEVICE_METAL: 4,
      DEVICE_VULKAN: 5,
    },
  },
  {
    file: 'common.proto',
    name: 'DataType',
    values: {
      DATA_TYPE_UNKNOWN: 0,
      DATA_TYPE_FLOAT32: 1,
      DATA_TYPE_FLOAT64: 2,
      DATA_TYPE_INT32: 3,
      DATA_TYPE_INT64: 4,
      DATA_TYPE_UINT8: 5,
    },
  },
  // job.proto (2.2)
  {
    file: 'job.proto',
    name: 'JobType',
    values: {
      JOB_TYPE_UNKNOWN: 0,
      JOB_TYPE_TRAINING: 1,
      JOB_TYPE_INFERENCE: 2,
      JOB_TYPE_EVALUATION: 3,
      JOB_TYPE_PREPROCESSING: 4,
    },
  },
  {
    file: 'job.proto',
    name: 'JobPriority',
    values: { PRIORITY_LOW: 0, PRIORITY_NORMAL: 1, PRIORITY_HIGH: 2, PRIORITY_CRITICAL: 3 },
  },
  // node.proto (2.3)
  {
    file: 'node.proto',
    name: 'NodePricing.BillingModel',
    values: { BILLING_HOURLY: 0, BILLING_PER_EPOCH: 1, BILLING_PER_JOB: 2, BILLING_PER_INFERENCE: 3 },
  },
  {
    file: 'node.proto',
    name: 'FindNodesRequest.SortBy',
    values: {
      SORT_BY_PRICE: 0,
      SORT_BY_PERFORMANCE: 1,
      SORT_BY_REPUTATION: 2,
      SORT_BY_AVAILABILITY: 3,
    },
  },
  // reservation.proto (2.4)
  {
    file: 'reservation.proto',
    name: 'ReservationStatus',
    values: {
      RESERVATION_UNKNOWN: 0,
      RESERVATION_PENDING: 1,
      RESERVATION_ACTIVE: 2,
      RESERVATION_PAUSED: 3,
      RESERVATION_COMPLETING: 4,
      RESERVATION_COMPLETED: 5,
      RESERVATION_CANCELLED: 6,
      RESERVATION_EXPIRED: 7,
      RESERVATION_FAILED: 8,
    },
  },
  // wallet.proto (2.5): unprefixed values at package scope
  {
    file: 'wallet.proto',
    name: 'TransactionType',
    values: { UNKNOWN: 0, JOB_PAYMENT: 1, REWARD_CLAIM: 2, STAKE: 3, UNSTAKE: 4, REFUND: 5 },
  },
  {
    file: 'wallet.proto',
    name: 'TransactionStatus',
    values: { PENDING: 0, CONFIRMED: 1, FAILED: 2 },
  },
];

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------
const MESSAGES: MessageSpec[] = [
  // ----- common.proto (2.1) -----
  { file: 'common.proto', name: 'Error', fields: ['1 code: int32', '2 message: string', '3 details: string'] },
  {
    file: 'common.proto',
    name: 'TensorInfo',
    fields: ['1 shape: repeated int64', '2 dtype: DataType', '3 name: string'],
  },
  {
    file: 'common.proto',
    name: 'DeviceCaps',
    fields: [
      '1 device_type: DeviceType',
      '2 device_name: string',
      '3 memory_total: int64',
      '4 memory_available: int64',
      '5 compute_units: int32',
      '6 supports_fp64: bool',
      '7 supports_fp16: bool',
      '8 gpu_model: string',
      '9 vram_total: int64',
      '10 vram_available: int64',
      '11 driver_version: string',
      '12 cuda_version: string',
      '13 pcie_generation: int32',
      '14 pcie_lanes: int32',
      '15 compute_capability: double',
    ],
  },
  {
    file: 'common.proto',
    name: 'Version',
    fields: ['1 major: int32', '2 minor: int32', '3 patch: int32', '4 build: string'],
  },

  // ----- job.proto (2.2) -----
  {
    file: 'job.proto',
    name: 'JobConfig',
    fields: [
      '1 job_id: string',
      '2 job_type: JobType',
      '3 priority: JobPriority',
      '4 model_definition: string',
      '5 hyperparameters: map<string,string>',
      '6 dataset_uri: string',
      '7 batch_size: int32',
      '8 epochs: int32',
      '9 required_device: DeviceType',
      '10 estimated_memory: int64',
      '11 estimated_duration: int64',
      '12 payment_amount: double',
      '13 payment_address: string',
      '14 escrow_tx_hash: string',
      '15 reservation_duration_minutes: int32',
    ],
  },
  {
    file: 'job.proto',
    name: 'JobStatus',
    fields: [
      '1 job_id: string',
      '2 status: StatusCode',
      '3 progress: double',
      '4 current_node_id: string',
      '5 start_time: int64',
      '6 end_time: int64',
      '7 error: Error',
      '8 metrics: map<string,double>',
      '9 current_epoch: int32',
    ],
  },
  {
    file: 'job.proto',
    name: 'JobResult',
    fields: [
      '1 job_id: string',
      '2 status: StatusCode',
      '3 model_weights_uri: string',
      '4 model_weights_hash: string',
      '5 model_size: int64',
      '6 final_metrics: map<string,double>',
      '7 total_compute_time: int64',
      '8 energy_consumed: double',
      '9 proof_of_compute: string',
      '10 signatures: repeated string',
    ],
  },
  { file: 'job.proto', name: 'SubmitJobRequest', fields: ['1 config: JobConfig', '2 initial_data: bytes'] },
  {
    file: 'job.proto',
    name: 'NodeAssignment',
    fields: [
      '1 node_id: string',
      '2 node_endpoint: string',
      '3 auth_token: string',
      '4 token_expires_at: int64',
      '5 node_public_key: string',
    ],
  },
  {
    file: 'job.proto',
    name: 'SubmitJobResponse',
    fields: [
      '1 job_id: string',
      '2 status: StatusCode',
      '3 node_assignment: NodeAssignment',
      '4 assigned_node_id: string',
      '5 error: Error',
      '6 estimated_start_time: int64',
    ],
  },
  { file: 'job.proto', name: 'GetJobStatusRequest', fields: ['1 job_id: string'] },
  {
    file: 'job.proto',
    name: 'GetJobStatusResponse',
    fields: ['1 status: JobStatus', '2 node_assignment: NodeAssignment', '3 error: Error'],
  },
  { file: 'job.proto', name: 'CancelJobRequest', fields: ['1 job_id: string', '2 reason: string'] },
  {
    file: 'job.proto',
    name: 'CancelJobResponse',
    fields: ['1 status: StatusCode', '2 refund_issued: bool', '3 error: Error'],
  },
  { file: 'job.proto', name: 'DeleteJobRequest', fields: ['1 job_id: string'] },
  { file: 'job.proto', name: 'DeleteJobResponse', fields: ['1 status: StatusCode', '2 error: Error'] },
  {
    file: 'job.proto',
    name: 'JobUpdateStream',
    fields: [
      '1 job_id: string',
      '2 status: JobStatus',
      '3 live_metrics: map<string,double>',
      '4 log_message: string',
      '5 visualization_data: bytes',
    ],
  },
  {
    file: 'job.proto',
    name: 'ListJobsRequest',
    fields: [
      '1 user_id: string',
      '2 page_size: int32',
      '3 page_token: string',
      '4 filter_type: JobType',
      '5 filter_status: StatusCode',
    ],
  },
  {
    file: 'job.proto',
    name: 'ListJobsResponse',
    fields: ['1 jobs: repeated JobStatus', '2 next_page_token: string', '3 total_count: int32'],
  },

  // ----- node.proto (2.3) -----
  {
    file: 'node.proto',
    name: 'NodeInfo',
    fields: [
      '1 node_id: string',
      '2 name: string',
      '3 version: Version',
      '4 devices: repeated DeviceCaps',
      '5 cpu_cores: int32',
      '6 ram_total: int64',
      '7 ram_available: int64',
      '8 ip_address: string',
      '9 port: int32',
      '10 region: string',
      '11 compute_score: double',
      '12 reputation_score: double',
      '13 total_jobs_completed: int64',
      '14 total_compute_hours: int64',
      '15 average_rating: double',
      '16 staked_amount: double',
      '17 wallet_address: string',
      '18 is_online: bool',
      '19 last_heartbeat: int64',
      '20 uptime_percentage: double',
      '21 supported_formats: repeated string',
      '22 max_model_size: int64',
      '23 supports_terminal_access: bool',
      '24 available_runtimes: repeated string',
      '25 pricing: NodePricing',
    ],
  },
  {
    file: 'node.proto',
    name: 'NodePricing',
    fields: [
      '1 billing_model: NodePricing.BillingModel',
      '2 price_per_hour: double',
      '3 price_per_epoch: double',
      '4 price_per_job_base: double',
      '5 price_per_inference: double',
      '6 minimum_charge: double',
      '7 minimum_duration_minutes: int32',
      '8 discount_1h_plus: double',
      '9 discount_24h_plus: double',
      '10 discount_bulk: double',
      '11 usd_equivalent: double',
      '12 price_updated_at: int64',
      '13 accepts_cyxwiz_token: bool',
      '14 accepts_sol: bool',
      '15 accepts_usdc: bool',
      '16 free_tier_available: bool',
      '17 free_tier_minutes: int32',
    ],
  },
  {
    file: 'node.proto',
    name: 'RegisterNodeRequest',
    fields: ['1 info: NodeInfo', '2 authentication_token: string', '3 public_key: bytes'],
  },
  {
    file: 'node.proto',
    name: 'RegisterNodeResponse',
    fields: ['1 status: StatusCode', '2 node_id: string', '3 session_token: string', '4 error: Error'],
  },
  {
    file: 'node.proto',
    name: 'HeartbeatRequest',
    fields: ['1 node_id: string', '2 current_status: NodeInfo', '3 active_jobs: repeated string'],
  },
  {
    file: 'node.proto',
    name: 'HeartbeatResponse',
    fields: [
      '1 status: StatusCode',
      '2 keep_alive: bool',
      '3 jobs_to_cancel: repeated string',
      '4 error: Error',
    ],
  },
  {
    file: 'node.proto',
    name: 'AssignJobRequest',
    fields: ['1 node_id: string', '2 job: JobConfig', '3 authorization_token: string'],
  },
  {
    file: 'node.proto',
    name: 'AssignJobResponse',
    fields: [
      '1 status: StatusCode',
      '2 job_id: string',
      '3 accepted: bool',
      '4 error: Error',
      '5 estimated_start_time: string', // string here, int64 elsewhere
    ],
  },
  {
    file: 'node.proto',
    name: 'ReportProgressRequest',
    fields: [
      '1 node_id: string',
      '2 job_id: string',
      '3 status: JobStatus',
      '4 current_metrics: map<string,double>',
    ],
  },
  {
    file: 'node.proto',
    name: 'ReportProgressResponse',
    fields: ['1 status: StatusCode', '2 continue_job: bool', '3 error: Error'],
  },
  {
    file: 'node.proto',
    name: 'ReportCompletionRequest',
    fields: ['1 node_id: string', '2 job_id: string', '3 result: JobResult', '4 signature: bytes'],
  },
  {
    file: 'node.proto',
    name: 'ReportCompletionResponse',
    fields: [
      '1 status: StatusCode',
      '2 payment_released: bool',
      '3 payment_tx_hash: string',
      '4 error: Error',
    ],
  },
  {
    file: 'node.proto',
    name: 'GetNodeMetricsRequest',
    fields: ['1 node_id: string', '2 start_time: int64', '3 end_time: int64'],
  },
  {
    file: 'node.proto',
    name: 'GetNodeMetricsResponse',
    fields: ['1 metrics: repeated MetricPoint', '2 error: Error'],
  },
  {
    file: 'node.proto',
    name: 'MetricPoint',
    fields: [
      '1 timestamp: int64',
      '2 cpu_usage: double',
      '3 gpu_usage: double',
      '4 memory_usage: double',
      '5 network_throughput: double',
      '6 power_consumption: double',
    ],
  },
  {
    file: 'node.proto',
    name: 'JobAcceptedRequest',
    fields: [
      '1 node_id: string',
      '2 job_id: string',
      '3 engine_address: string',
      '4 accepted_at: int64',
      '5 node_endpoint: string',
    ],
  },
  {
    file: 'node.proto',
    name: 'JobAcceptedResponse',
    fields: ['1 status: StatusCode', '2 acknowledged: bool', '3 error: Error'],
  },
  {
    file: 'node.proto',
    name: 'FindNodesRequest',
    fields: [
      '1 required_device: DeviceType',
      '2 min_memory: int64',
      '3 min_reputation: double',
      '4 preferred_region: string',
      '5 max_results: int32',
      '6 max_price_per_hour: double',
      '7 max_price_usd: double',
      '8 preferred_billing: NodePricing.BillingModel',
      '9 require_free_tier: bool',
      '10 min_vram: int64',
      '11 min_compute_score: double',
      '12 min_stake: double',
      '13 allowed_regions: repeated string',
      '14 blocked_regions: repeated string',
      '15 sort_by: FindNodesRequest.SortBy',
    ],
  },
  {
    file: 'node.proto',
    name: 'FindNodesResponse',
    fields: [
      '1 nodes: repeated NodeInfo',
      '2 total_matching: int32',
      '3 avg_price_per_hour: double',
      '4 min_price_per_hour: double',
      '5 max_price_per_hour: double',
      '6 error: Error',
    ],
  },
  {
    file: 'node.proto',
    name: 'ListNodesRequest',
    fields: [
      '1 page_size: int32',
      '2 page_token: string',
      '3 online_only: bool',
      '4 filter_device: DeviceType',
      '5 filter_region: string',
      '6 min_price_per_hour: double',
      '7 max_price_per_hour: double',
      '8 sort_by: FindNodesRequest.SortBy',
      '9 sort_descending: bool',
    ],
  },
  {
    file: 'node.proto',
    name: 'ListNodesResponse',
    fields: [
      '1 nodes: repeated NodeInfo',
      '2 next_page_token: string',
      '3 total_count: int32',
      '4 online_count: int32',
      '5 network_avg_price: double',
      '6 network_total_compute: double',
    ],
  },
  { file: 'node.proto', name: 'GetNodeInfoRequest', fields: ['1 node_id: string'] },
  { file: 'node.proto', name: 'GetNodeInfoResponse', fields: ['1 info: NodeInfo', '2 error: Error'] },
  {
    file: 'node.proto',
    name: 'UpdateJobStatusRequest',
    fields: [
      '1 node_id: string',
      '2 job_id: string',
      '3 status: StatusCode',
      '4 progress: double',
      '5 metrics: map<string,double>',
      '6 current_epoch: int32',
      '7 log_message: string',
    ],
  },
  {
    file: 'node.proto',
    name: 'UpdateJobStatusResponse',
    fields: ['1 status: StatusCode', '2 should_continue: bool', '3 error: Error'],
  },
  {
    file: 'node.proto',
    name: 'ReportJobResultRequest',
    fields: [
      '1 node_id: string',
      '2 job_id: string',
      '3 final_status: StatusCode',
      '4 final_metrics: map<string,double>',
      '5 model_weights_uri: string',
      '6 model_weights_hash: string',
      '7 model_size: int64',
      '8 total_compute_time: int64', // milliseconds
      '9 error_message: string',
    ],
  },
  { file: 'node.proto', name: 'ReportJobResultResponse', fields: ['1 status: StatusCode', '2 error: Error'] },

  // ----- execution.proto (2.7) -----
  {
    file: 'execution.proto',
    name: 'ConnectRequest',
    fields: ['1 auth_token: string', '2 job_id: string', '3 engine_version: string'],
  },
  {
    file: 'execution.proto',
    name: 'ConnectResponse',
    fields: [
      '1 status: StatusCode',
      '2 node_id: string',
      '3 capabilities: NodeCapabilities',
      '4 error: Error',
    ],
  },
  {
    file: 'execution.proto',
    name: 'NodeCapabilities',
    fields: [
      '1 supported_devices: repeated DeviceType',
      '2 max_memory: int64',
      '3 max_batch_size: int32',
      '4 supported_optimizers: repeated string',
      '5 supports_checkpointing: bool',
      '6 supports_distributed: bool',
    ],
  },
  {
    file: 'execution.proto',
    name: 'SendJobRequest',
    fields: [
      '1 job_id: string',
      '2 config: JobConfig',
      '3 initial_dataset: bytes',
      '4 dataset_uri: string',
    ],
  },
  {
    file: 'execution.proto',
    name: 'SendJobResponse',
    fields: [
      '1 status: StatusCode',
      '2 accepted: bool',
      '3 estimated_start_time: int64',
      '4 rejection_reason: string',
      '5 error: Error',
    ],
  },
  { file: 'execution.proto', name: 'DisconnectRequest', fields: ['1 reason: string'] },
  {
    file: 'execution.proto',
    name: 'DisconnectResponse',
    fields: ['1 status: StatusCode', '2 message: string'],
  },
  {
    file: 'execution.proto',
    name: 'StartNewJobRequest',
    fields: ['1 reservation_id: string', '2 job_id: string', '3 job_config: JobConfig'],
  },
  {
    file: 'execution.proto',
    name: 'StartNewJobResponse',
    fields: ['1 accepted: bool', '2 message: string'],
  },
  {
    file: 'execution.proto',
    name: 'TrainingCommand',
    // The contract gives names and numbers only; the flag types (bool) and the
    // sub-message names are this repo's choice.
    fields: [
      '1 pause: bool',
      '2 resume: bool',
      '3 stop: bool',
      '4 request_checkpoint: bool',
      '5 update_params: UpdateHyperparameters',
      '10 batch_response: BatchResponse',
      '11 dataset_info_response: DatasetInfoResponse',
      '20 new_job_config: JobConfig',
      '21 reservation_end: bool',
    ],
    oneofs: {
      command: [
        'pause',
        'resume',
        'stop',
        'request_checkpoint',
        'update_params',
        'batch_response',
        'dataset_info_response',
        'new_job_config',
        'reservation_end',
      ],
    },
  },
  // Not described field-by-field by the contract; declared empty on purpose
  // (the central server never reads them).
  ...[
    'UpdateHyperparameters',
    'BatchResponse',
    'DatasetInfoResponse',
    'TrainingUpdate',
    'DownloadRequest',
    'WeightsChunk',
    'PauseTrainingRequest',
    'PauseTrainingResponse',
    'ResumeTrainingRequest',
    'ResumeTrainingResponse',
    'CancelTrainingRequest',
    'CancelTrainingResponse',
  ].map(
    (name): MessageSpec => ({
      file: 'execution.proto',
      name,
      fields: [],
      note: 'minimal: fields not used by the central server',
    }),
  ),

  // ----- reservation.proto (2.4) -----
  {
    file: 'reservation.proto',
    name: 'ReserveNodeRequest',
    fields: [
      '1 node_id: string',
      '2 user_wallet: string',
      '3 duration_minutes: int32',
      '4 job_config: JobConfig',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReserveNodeResponse',
    fields: [
      '1 status: StatusCode',
      '2 reservation_id: string',
      '3 job_id: string',
      '4 node_endpoint: string',
      '5 p2p_auth_token: string',
      '6 p2p_token_expires: int64',
      '7 escrow_account: string',
      '8 escrow_amount: int64',
      '9 reservation_start: int64',
      '10 reservation_expires: int64',
      '11 price_per_hour: double',
      '15 error: Error', // 15, not 10
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ConfirmJobCompleteRequest',
    fields: [
      '1 reservation_id: string',
      '2 job_id: string',
      '3 model_hash: string',
      '4 final_metrics: map<string,double>',
      '5 success: bool',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ConfirmJobCompleteResponse',
    fields: [
      '1 status: StatusCode',
      '2 payment_released: bool',
      '3 payment_tx_hash: string',
      '10 error: Error',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ExtendReservationRequest',
    fields: ['1 reservation_id: string', '2 additional_minutes: int32'],
  },
  {
    file: 'reservation.proto',
    name: 'ExtendReservationResponse',
    fields: [
      '1 status: StatusCode',
      '2 new_expires: int64',
      '3 additional_escrow: int64',
      '4 escrow_tx_hash: string',
      '10 error: Error',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReleaseReservationRequest',
    fields: ['1 reservation_id: string', '2 reason: string'],
  },
  {
    file: 'reservation.proto',
    name: 'ReleaseReservationResponse',
    fields: [
      '1 status: StatusCode',
      '2 time_used_seconds: int64',
      '3 payment_released: int64',
      '4 refund_amount: int64',
      '5 payment_tx_hash: string',
      '6 refund_tx_hash: string',
      '10 error: Error',
    ],
  },
  { file: 'reservation.proto', name: 'GetReservationRequest', fields: ['1 reservation_id: string'] },
  {
    file: 'reservation.proto',
    name: 'GetReservationResponse',
    fields: ['1 status: StatusCode', '2 reservation: ReservationInfo', '10 error: Error'],
  },
  {
    file: 'reservation.proto',
    name: 'ReservationInfo',
    fields: [
      '1 reservation_id: string',
      '2 user_id: string',
      '3 user_wallet: string',
      '4 node_id: string',
      '5 node_wallet: string',
      '6 node_endpoint: string',
      '7 status: ReservationStatus',
      '8 start_time: int64',
      '9 end_time: int64',
      '10 time_remaining_seconds: int64',
      '11 escrow_account: string',
      '12 escrow_amount: int64',
      '13 price_per_hour: double',
      '14 current_job_id: string',
      '15 job_progress: double',
      '16 current_metrics: map<string,double>',
      '17 jobs_completed: int32',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ListReservationsRequest',
    fields: ['1 user_id: string', '2 page_size: int32', '3 page_token: string', '4 active_only: bool'],
  },
  {
    file: 'reservation.proto',
    name: 'ListReservationsResponse',
    // no status, no error
    fields: [
      '1 reservations: repeated ReservationInfo',
      '2 next_page_token: string',
      '3 total_count: int32',
    ],
  },
  { file: 'reservation.proto', name: 'GetActiveReservationsRequest', fields: ['1 user_wallet: string'] },
  {
    file: 'reservation.proto',
    name: 'GetActiveReservationsResponse',
    fields: [
      '1 status: StatusCode',
      '2 reservations: repeated ActiveReservationInfo',
      '10 error: Error',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ActiveReservationInfo',
    fields: [
      '1 reservation_id: string',
      '2 node_id: string',
      '3 node_endpoint: string',
      '4 time_remaining_seconds: int64',
      '5 engine_connected: bool',
      '6 status: ReservationStatus',
      '7 jobs_completed: int32',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'GetReconnectionTokenRequest',
    fields: ['1 reservation_id: string', '2 user_wallet: string'],
  },
  {
    file: 'reservation.proto',
    name: 'GetReconnectionTokenResponse',
    fields: [
      '1 status: StatusCode',
      '2 p2p_auth_token: string',
      '3 p2p_token_expires: int64',
      '4 node_endpoint: string',
      '5 time_remaining_seconds: int64',
      '6 current_job_id: string',
      '10 error: Error',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'EngineHeartbeatRequest',
    fields: [
      '1 reservation_id: string',
      '2 job_id: string',
      '3 training_active: bool',
      '4 job_progress: double',
      '5 current_metrics: map<string,double>',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'EngineHeartbeatResponse',
    fields: [
      '1 status: StatusCode',
      '2 time_remaining_seconds: int64',
      '3 should_extend: bool',
      '4 message: string',
      '10 error: Error',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReportJobCompleteFromNodeRequest',
    fields: [
      '1 reservation_id: string',
      '2 job_id: string',
      '3 node_id: string',
      '4 success: bool',
      '5 model_hash: string',
      '6 final_metrics: map<string,double>',
      '7 training_time_seconds: int64',
      '8 epochs_completed: int32',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReportJobCompleteFromNodeResponse',
    fields: [
      '1 status: StatusCode',
      '2 new_reputation: double',
      '3 reputation_change: double',
      '4 jobs_in_reservation: int32',
      '5 message: string',
      '10 error: Error',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReportReservationEndFromEngineRequest',
    fields: [
      '1 reservation_id: string',
      '2 jobs_completed: int32',
      '3 final_model_hash: string',
      '4 user_satisfied: bool',
      '5 feedback: string',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReportReservationEndFromEngineResponse',
    fields: [
      '1 status: StatusCode',
      '2 payment_released: bool',
      '3 amount_paid: int64',
      '4 payment_tx_hash: string',
      '5 message: string',
      '10 error: Error',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReportReservationEndFromNodeRequest',
    fields: [
      '1 reservation_id: string',
      '2 node_id: string',
      '3 jobs_completed: int32',
      '4 total_compute_time: int64',
      '5 node_available: bool',
    ],
  },
  {
    file: 'reservation.proto',
    name: 'ReportReservationEndFromNodeResponse',
    fields: [
      '1 status: StatusCode',
      '2 payment_released: bool',
      '3 amount_received: int64',
      '4 payment_tx_hash: string',
      '5 message: string',
      '10 error: Error',
    ],
  },

  // ----- wallet.proto (2.5) -----
  { file: 'wallet.proto', name: 'ConnectWalletRequest', fields: ['1 wallet_address: string'] },
  {
    file: 'wallet.proto',
    name: 'ConnectWalletResponse',
    fields: [
      '1 status: StatusCode',
      '2 message: string',
      '3 is_valid: bool',
      '4 wallet_address: string',
    ],
  },
  { file: 'wallet.proto', name: 'GetBalanceRequest', fields: ['1 wallet_address: string'] },
  {
    file: 'wallet.proto',
    name: 'GetBalanceResponse',
    fields: [
      '1 status: StatusCode',
      '2 message: string',
      '3 sol_balance: double',
      '4 cyxwiz_balance: double',
      '5 token_mint: string',
    ],
  },
  {
    file: 'wallet.proto',
    name: 'Transaction',
    fields: [
      '1 signature: string',
      '2 type: TransactionType',
      '3 status: TransactionStatus',
      '4 amount: double',
      '5 timestamp: int64',
      '6 description: string',
      '7 job_id: uint64',
    ],
  },
  {
    file: 'wallet.proto',
    name: 'GetTransactionHistoryRequest',
    fields: ['1 wallet_address: string', '2 limit: int32', '3 offset: int32'],
  },
  {
    file: 'wallet.proto',
    name: 'GetTransactionHistoryResponse',
    fields: [
      '1 status: StatusCode',
      '2 message: string',
      '3 transactions: repeated Transaction',
      '4 total_count: int32',
    ],
  },
  {
    file: 'wallet.proto',
    name: 'EstimateJobCostRequest',
    fields: ['1 model_type: string', '2 epochs: int32', '3 dataset_size: int32', '4 node_tier: string'],
  },
  {
    file: 'wallet.proto',
    name: 'EstimateJobCostResponse',
    fields: [
      '1 status: StatusCode',
      '2 message: string',
      '3 estimated_cost: double',
      '4 estimated_time_minutes: double',
      '5 breakdown: string',
    ],
  },
];

// ---------------------------------------------------------------------------
// Services (section 1.1)
// ---------------------------------------------------------------------------
const SERVICES: ServiceSpec[] = [
  {
    file: 'job.proto',
    name: 'JobService',
    servedByCentral: true,
    methods: {
      SubmitJob: 'SubmitJobRequest -> SubmitJobResponse',
      GetJobStatus: 'GetJobStatusRequest -> GetJobStatusResponse',
      CancelJob: 'CancelJobRequest -> CancelJobResponse',
      StreamJobUpdates: 'GetJobStatusRequest -> stream JobUpdateStream',
      ListJobs: 'ListJobsRequest -> ListJobsResponse',
      DeleteJob: 'DeleteJobRequest -> DeleteJobResponse',
    },
  },
  {
    file: 'node.proto',
    name: 'NodeService',
    servedByCentral: true,
    methods: {
      RegisterNode: 'RegisterNodeRequest -> RegisterNodeResponse',
      Heartbeat: 'HeartbeatRequest -> HeartbeatResponse',
      AssignJob: 'AssignJobRequest -> AssignJobResponse',
      ReportProgress: 'ReportProgressRequest -> ReportProgressResponse',
      ReportCompletion: 'ReportCompletionRequest -> ReportCompletionResponse',
      GetNodeMetrics: 'GetNodeMetricsRequest -> GetNodeMetricsResponse',
      NotifyJobAccepted: 'JobAcceptedRequest -> JobAcceptedResponse',
    },
  },
  {
    file: 'node.proto',
    name: 'NodeDiscoveryService',
    servedByCentral: true,
    methods: {
      ListNodes: 'ListNodesRequest -> ListNodesResponse',
      FindNodes: 'FindNodesRequest -> FindNodesResponse',
      GetNodeInfo: 'GetNodeInfoRequest -> GetNodeInfoResponse',
    },
  },
  {
    file: 'node.proto',
    name: 'JobStatusService',
    servedByCentral: true,
    methods: {
      UpdateJobStatus: 'UpdateJobStatusRequest -> UpdateJobStatusResponse',
      ReportJobResult: 'ReportJobResultRequest -> ReportJobResultResponse',
    },
  },
  {
    file: 'execution.proto',
    name: 'JobExecutionService',
    servedByCentral: false,
    methods: {
      ConnectToNode: 'ConnectRequest -> ConnectResponse',
      DisconnectFromNode: 'DisconnectRequest -> DisconnectResponse',
      SendJob: 'SendJobRequest -> SendJobResponse',
      StreamTrainingMetrics: 'stream TrainingCommand -> stream TrainingUpdate',
      DownloadWeights: 'DownloadRequest -> stream WeightsChunk',
      PauseTraining: 'PauseTrainingRequest -> PauseTrainingResponse',
      ResumeTraining: 'ResumeTrainingRequest -> ResumeTrainingResponse',
      CancelTraining: 'CancelTrainingRequest -> CancelTrainingResponse',
      StartNewJob: 'StartNewJobRequest -> StartNewJobResponse',
    },
  },
  {
    file: 'reservation.proto',
    name: 'JobReservationService',
    servedByCentral: true,
    methods: {
      ReserveNode: 'ReserveNodeRequest -> ReserveNodeResponse',
      ConfirmJobComplete: 'ConfirmJobCompleteRequest -> ConfirmJobCompleteResponse',
      ExtendReservation: 'ExtendReservationRequest -> ExtendReservationResponse',
      ReleaseReservation: 'ReleaseReservationRequest -> ReleaseReservationResponse',
      GetReservation: 'GetReservationRequest -> GetReservationResponse',
      ListReservations: 'ListReservationsRequest -> ListReservationsResponse',
      EngineHeartbeat: 'EngineHeartbeatRequest -> EngineHeartbeatResponse',
      GetActiveReservations: 'GetActiveReservationsRequest -> GetActiveReservationsResponse',
      GetReconnectionToken: 'GetReconnectionTokenRequest -> GetReconnectionTokenResponse',
      ReportJobCompleteFromNode: 'ReportJobCompleteFromNodeRequest -> ReportJobCompleteFromNodeResponse',
      ReportReservationEndFromEngine:
        'ReportReservationEndFromEngineRequest -> ReportReservationEndFromEngineResponse',
      ReportReservationEndFromNode:
        'ReportReservationEndFromNodeRequest -> ReportReservationEndFromNodeResponse',
    },
  },
  {
    file: 'reservation.proto',
    name: 'P2PTrainingService',
    servedByCentral: false,
    methods: {
      PauseTraining: 'PauseTrainingRequest -> PauseTrainingResponse',
      ResumeTraining: 'ResumeTrainingRequest -> ResumeTrainingResponse',
      CancelTraining: 'CancelTrainingRequest -> CancelTrainingResponse',
      StartNewJob: 'StartNewJobRequest -> StartNewJobResponse',
    },
  },
  {
    file: 'wallet.proto',
    name: 'WalletService',
    servedByCentral: true,
    methods: {
      ConnectWallet: 'ConnectWalletRequest -> ConnectWalletResponse',
      GetBalance: 'GetBalanceRequest -> GetBalanceResponse',
      GetTransactionHistory: 'GetTransactionHistoryRequest -> GetTransactionHistoryResponse',
      EstimateJobCost: 'EstimateJobCostRequest -> EstimateJobCostResponse',
    },
  },
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------
function loadRoot(): protobuf.Root {
  const root = new protobuf.Root();
  // Imports are bare file names resolved against proto/, as in the original repo.
  root.resolvePath = (_origin: string, target: string) =>
    path.isAbsolute(target) ? target : path.join(PROTO_DIR, target);
  root.loadSync([...FILES], { keepCase: true });
  root.resolveAll();
  return root;
}

/** Package-relative name of a resolved message/enum: '.cyxwiz.protocol.A.B' -> 'A.B'. */
function relName(obj: protobuf.ReflectionObject): string {
  const prefix = `.${PACKAGE}.`;
  if (!obj.fullName.startsWith(prefix)) throw new Error(`${obj.fullName} is outside package ${PACKAGE}`);
  return obj.fullName.slice(prefix.length);
}

function describeField(f: protobuf.Field): string {
  const value = f.resolvedType ? relName(f.resolvedType) : f.type;
  if (f.map) return `map<${(f as unknown as protobuf.MapField).keyType},${value}>`;
  return f.repeated ? `repeated ${value}` : value;
}

const FIELD_RE = /^(\d+) (\w+): (.+)$/;
function parseField(spec: string): { id: number; name: string; type: string } {
  const m = FIELD_RE.exec(spec);
  if (!m) throw new Error(`bad field spec in table: '${spec}'`);
  return { id: Number(m[1]), name: m[2], type: m[3].replace(/\s*,\s*/g, ',').trim() };
}

function fileOf(obj: protobuf.ReflectionObject): string {
  return path.basename(obj.filename ?? '');
}

/** All messages, enums and services under the package, keyed by package-relative name. */
function collect(ns: protobuf.NamespaceBase, out = new Map<string, protobuf.ReflectionObject>()) {
  for (const o of ns.nestedArray) {
    out.set(relName(o), o);
    if (o instanceof protobuf.Namespace || o instanceof protobuf.Type) collect(o, out);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------
describe('proto wire contract (CYXWIZ-PROTOCOL.md §1, §2)', () => {
  let root: protobuf.Root;
  let all: Map<string, protobuf.ReflectionObject>;

  beforeAll(() => {
    root = loadRoot();
    all = collect(root.lookup(PACKAGE) as protobuf.Namespace);
  });

  describe('files', () => {
    it.each(FILES.map((f) => [f]))('%s: proto3, package cyxwiz.protocol, bare imports', (file) => {
      const text = fs.readFileSync(path.join(PROTO_DIR, file), 'utf8');
      expect(text).toMatch(/^\s*syntax\s*=\s*"proto3"\s*;/m);
      expect([...text.matchAll(/^\s*package\s+([\w.]+)\s*;/gm)].map((m) => m[1])).toEqual([PACKAGE]);
      const imports = [...text.matchAll(/^\s*import\s+"([^"]+)"\s*;/gm)].map((m) => m[1]);
      expect(imports.sort()).toEqual([...IMPORTS[file as ProtoFile]].sort());
    });

    it('load with @grpc/proto-loader using the server options', () => {
      const def = protoLoader.loadSync([...FILES], {
        includeDirs: [PROTO_DIR],
        keepCase: true,
        longs: String,
        enums: String,
        defaults: true,
        oneofs: true,
      });
      expect(def[`${PACKAGE}.NodeService`]).toBeDefined();
    });
  });

  describe('table covers every definition in the six files', () => {
    it('messages', () => {
      const actual = [...all].filter(([, o]) => o instanceof protobuf.Type).map(([n]) => n);
      expect(actual.sort()).toEqual(MESSAGES.map((m) => m.name).sort());
    });
    it('enums', () => {
      const actual = [...all].filter(([, o]) => o instanceof protobuf.Enum).map(([n]) => n);
      expect(actual.sort()).toEqual(ENUMS.map((e) => e.name).sort());
    });
    it('services', () => {
      const actual = [...all].filter(([, o]) => o instanceof protobuf.Service).map(([n]) => n);
      expect(actual.sort()).toEqual(SERVICES.map((s) => s.name).sort());
    });
    it('table has no duplicate rows', () => {
      const names = [...MESSAGES.map((m) => m.name), ...ENUMS.map((e) => e.name), ...SERVICES.map((s) => s.name)];
      expect(new Set(names).size).toBe(names.length);
    });
  });

  describe('package-scope names do not collide (protoc/C++ enum-value scoping)', () => {
    it('top-level types, services and top-level enum values are unique', () => {
      const ns = root.lookup(PACKAGE) as protobuf.Namespace;
      const seen = new Map<string, string>();
      const dupes: string[] = [];
      const add = (n: string, what: string) => {
        if (seen.has(n)) dupes.push(`${n} (${what} vs ${seen.get(n)})`);
        else seen.set(n, what);
      };
      for (const o of ns.nestedArray) {
        add(o.name, fileOf(o));
        if (o instanceof protobuf.Enum) for (const v of Object.keys(o.values)) add(v, `value of ${o.name}`);
      }
      expect(dupes).toEqual([]);
    });
  });

  describe('enums', () => {
    it.each(ENUMS.map((e) => [e.name, e]))('%s', (_name, spec) => {
      const e = root.lookupEnum(`${PACKAGE}.${spec.name}`);
      expect(fileOf(e)).toBe(spec.file);
      expect(e.values).toEqual(spec.values);
    });
  });

  describe('messages', () => {
    it.each(MESSAGES.map((m) => [m.name, m]))('%s', (_name, spec) => {
      const t = root.lookupType(`${PACKAGE}.${spec.name}`);
      expect(fileOf(t)).toBe(spec.file);

      const expected = spec.fields.map(parseField);
      // Same set of field names (nothing missing, nothing extra).
      expect(t.fieldsArray.map((f) => f.name).sort()).toEqual(expected.map((f) => f.name).sort());
      // Each field: number and type (incl. repeated / map).
      const actual = Object.fromEntries(
        t.fieldsArray.map((f) => [f.name, `${f.id} ${f.name}: ${describeField(f)}`]),
      );
      const want = Object.fromEntries(expected.map((f) => [f.name, `${f.id} ${f.name}: ${f.type}`]));
      expect(actual).toEqual(want);
      // Explicit checks so a rule change cannot hide behind a type string.
      for (const f of expected) {
        const field = t.fields[f.name];
        expect(field.id).toBe(f.id);
        expect(field.map).toBe(f.type.startsWith('map<'));
        // protobufjs reports map fields as map=true, repeated=false.
        expect(field.repeated).toBe(f.type.startsWith('repeated '));
      }

      const oneofs = Object.fromEntries(
        t.oneofsArray.map((o) => [o.name, o.fieldsArray.map((f) => f.name).sort()]),
      );
      const wantOneofs = Object.fromEntries(
        Object.entries(spec.oneofs ?? {}).map(([k, v]) => [k, [...v].sort()]),
      );
      expect(oneofs).toEqual(wantOneofs);
    });
  });

  describe('services', () => {
    it.each(SERVICES.map((s) => [s.name, s]))('%s', (_name, spec) => {
      const svc = root.lookupService(`${PACKAGE}.${spec.name}`);
      expect(fileOf(svc)).toBe(spec.file);
      const actual = Object.fromEntries(
        svc.methodsArray.map((m) => [
          m.name,
          `${m.requestStream ? 'stream ' : ''}${relName(m.resolvedRequestType!)} -> ` +
            `${m.responseStream ? 'stream ' : ''}${relName(m.resolvedResponseType!)}`,
        ]),
      );
      expect(actual).toEqual(spec.methods);
    });
  });

  describe('gRPC method paths of the services the central server serves', () => {
    let def: protoLoader.PackageDefinition;
    beforeAll(() => {
      def = protoLoader.loadSync([...FILES], {
        includeDirs: [PROTO_DIR],
        keepCase: true,
        longs: String,
        enums: String,
        defaults: true,
        oneofs: true,
      });
    });

    it('the served set is the one in §1.1', () => {
      expect(SERVICES.filter((s) => s.servedByCentral).map((s) => s.name)).toEqual([
        'JobService',
        'NodeService',
        'NodeDiscoveryService',
        'JobStatusService',
        'JobReservationService',
        'WalletService',
      ]);
    });

    it('example path from §0', () => {
      const svc = def[`${PACKAGE}.NodeService`] as protoLoader.ServiceDefinition;
      expect(svc.RegisterNode.path).toBe('/cyxwiz.protocol.NodeService/RegisterNode');
    });

    const rows = SERVICES.filter((s) => s.servedByCentral).flatMap((s) =>
      Object.entries(s.methods).map(([method, sig]) => [`/${PACKAGE}.${s.name}/${method}`, s.name, method, sig] as const),
    );
    it.each(rows)('%s', (fullPath, service, method, sig) => {
      const svc = def[`${PACKAGE}.${service}`] as protoLoader.ServiceDefinition;
      expect(svc).toBeDefined();
      expect(Object.keys(svc).sort()).toContain(method);
      const md = svc[method];
      expect(md.path).toBe(fullPath);
      const [req, res] = sig.split(' -> ');
      expect(md.requestStream).toBe(req.startsWith('stream '));
      expect(md.responseStream).toBe(res.startsWith('stream '));
    });

    it.each(SERVICES.filter((s) => s.servedByCentral).map((s) => [s.name, s]))(
      '%s exposes exactly the table methods',
      (_name, spec) => {
        const svc = def[`${PACKAGE}.${spec.name}`] as protoLoader.ServiceDefinition;
        expect(Object.keys(svc).filter((k) => /^[A-Z]/.test(k)).sort()).toEqual(Object.keys(spec.methods).sort());
      },
    );
  });
});
