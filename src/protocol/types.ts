/**
 * TypeScript shapes of the cyxwiz.protocol messages the server reads and writes, as @grpc/proto-loader
 * presents them with LOADER_OPTIONS: snake_case fields, int64 as decimal strings, enums as numbers.
 * Replies may leave fields out; requests arrive with every field defaulted.
 */
export type Int64 = string;

export interface ErrorMsg {
  code: number;
  message: string;
  details?: string;
}

export interface DeviceCaps {
  device_type: number;
  device_name: string;
  memory_total: Int64;
  memory_available: Int64;
  compute_units: number;
  supports_fp64: boolean;
  supports_fp16: boolean;
  gpu_model: string;
  vram_total: Int64;
  vram_available: Int64;
  driver_version: string;
  cuda_version: string;
  pcie_generation: number;
  pcie_lanes: number;
  compute_capability: number;
}

export interface Version {
  major: number;
  minor: number;
  patch: number;
  build: string;
}

export interface JobConfig {
  job_id: string;
  job_type: number;
  priority: number;
  model_definition: string;
  hyperparameters: Record<string, string>;
  dataset_uri: string;
  batch_size: number;
  epochs: number;
  required_device: number;
  estimated_memory: Int64;
  estimated_duration: Int64;
  payment_amount: number;
  payment_address: string;
  escrow_tx_hash: string;
  reservation_duration_minutes: number;
}

export interface JobStatus {
  job_id: string;
  status: number;
  progress: number;
  current_node_id: string;
  start_time: Int64 | number;
  end_time: Int64 | number;
  error?: ErrorMsg | null;
  metrics: Record<string, number>;
  current_epoch: number;
}

export interface JobResult {
  job_id: string;
  status: number;
  model_weights_uri: string;
  model_weights_hash: string;
  model_size: Int64;
  final_metrics: Record<string, number>;
  total_compute_time: Int64;
  energy_consumed: number;
  proof_of_compute: string;
  signatures: string[];
}

export interface NodeAssignment {
  node_id: string;
  node_endpoint: string;
  auth_token: string;
  token_expires_at: Int64 | number;
  node_public_key: string;
}

export interface NodePricing {
  billing_model: number;
  price_per_hour: number;
  [field: string]: unknown;
}

export interface NodeInfo {
  node_id: string;
  name: string;
  version: Version | null;
  devices: DeviceCaps[];
  cpu_cores: number;
  ram_total: Int64;
  ram_available: Int64;
  ip_address: string;
  port: number;
  region: string;
  compute_score: number;
  reputation_score: number;
  total_jobs_completed: Int64;
  total_compute_hours: Int64;
  average_rating: number;
  staked_amount: number;
  wallet_address: string;
  is_online: boolean;
  last_heartbeat: Int64;
  uptime_percentage: number;
  supported_formats: string[];
  max_model_size: Int64;
  supports_terminal_access: boolean;
  available_runtimes: string[];
  pricing: NodePricing | null;
}

export interface SubmitJobRequest {
  config: JobConfig | null;
  initial_data: Buffer;
}
export interface GetJobStatusRequest {
  job_id: string;
}
export interface CancelJobRequest {
  job_id: string;
  reason: string;
}
export interface DeleteJobRequest {
  job_id: string;
}
export interface ListJobsRequest {
  user_id: string;
  page_size: number;
  page_token: string;
  filter_type: number;
  filter_status: number;
}

export interface RegisterNodeRequest {
  info: NodeInfo | null;
  authentication_token: string;
  public_key: Buffer;
}
export interface HeartbeatRequest {
  node_id: string;
  current_status: NodeInfo | null;
  active_jobs: string[];
}
export interface AssignJobRequest {
  node_id: string;
  job: JobConfig | null;
  authorization_token: string;
}
export interface AssignJobResponse {
  status: number;
  job_id: string;
  accepted: boolean;
  error: ErrorMsg | null;
  estimated_start_time: string;
}
export interface ReportProgressRequest {
  node_id: string;
  job_id: string;
  status: JobStatus | null;
  current_metrics: Record<string, number>;
}
export interface ReportCompletionRequest {
  node_id: string;
  job_id: string;
  result: JobResult | null;
  signature: Buffer;
}
export interface GetNodeMetricsRequest {
  node_id: string;
  start_time: Int64;
  end_time: Int64;
}
export interface JobAcceptedRequest {
  node_id: string;
  job_id: string;
  engine_address: string;
  accepted_at: Int64;
  node_endpoint: string;
}
export interface UpdateJobStatusRequest {
  node_id: string;
  job_id: string;
  status: number;
  progress: number;
  metrics: Record<string, number>;
  current_epoch: number;
  log_message: string;
}
export interface ReportJobResultRequest {
  node_id: string;
  job_id: string;
  final_status: number;
  final_metrics: Record<string, number>;
  model_weights_uri: string;
  model_weights_hash: string;
  model_size: Int64;
  /** Milliseconds (JobResult.total_compute_time is seconds). */
  total_compute_time: Int64;
  error_message: string;
}
