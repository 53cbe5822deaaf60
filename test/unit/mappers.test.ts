import { latestMatch } from '../../src/api/rest/app';
import { isSignature, metricsValue, peerIp, toJobSpec, toJobStatus, toNodeRegistration } from '../../src/api/grpc/mappers';
import { toProtocolFailure } from '../../src/api/grpc/errors';
import { toAssignedJobConfig } from '../../src/activities/dispatch';
import { ConflictError, NotFoundError, UnavailableError, ValidationError } from '../../src/domain/errors';
import type { JobRow } from '../../src/db/jobs-repo';
import type { JobConfig, NodeInfo } from '../../src/protocol/types';

const baseConfig = (over: Partial<JobConfig> = {}): JobConfig => ({
  job_id: '',
  job_type: 1,
  priority: 1,
  model_definition: '{"layers":[]}',
  hyperparameters: { lr: '0.001' },
  dataset_uri: 'file:///data/mnist',
  batch_size: 32,
  epochs: 10,
  required_device: 2,
  estimated_memory: String(2 ** 30),
  estimated_duration: '600',
  payment_amount: 1.5,
  payment_address: 'Payer1111',
  escrow_tx_hash: '',
  reservation_duration_minutes: 0,
  ...over,
});

const fieldOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    if (err instanceof ValidationError) return err.field;
    throw err;
  }
  throw new Error('did not throw');
};

describe('toJobSpec', () => {
  it('maps a valid config, with exact smallest units and a server-assigned id', () => {
    const spec = toJobSpec(baseConfig(), 9);
    expect(spec).toMatchObject({
      jobType: 'TRAINING',
      priority: 'NORMAL',
      requiredDevice: 'CUDA',
      estimatedMemory: 2 ** 30,
      estimatedDuration: 600,
      paymentUnits: '1500000000',
      paymentAddress: 'Payer1111',
      hyperparameters: { lr: '0.001' },
    });
    expect(spec.jobId).toMatch(/^[0-9a-f-]{36}$/);
    expect(toJobSpec(baseConfig({ job_id: 'my-job.1' }), 9).jobId).toBe('my-job.1');
  });

  it.each<[Partial<JobConfig> | null, string]>([
    [null, 'config'],
    [{ job_type: 0 }, 'config.job_type'],
    [{ job_type: 9 }, 'config.job_type'],
    [{ priority: 7 }, 'config.priority'],
    [{ dataset_uri: '  ' }, 'config.dataset_uri'],
    [{ batch_size: 0 }, 'config.batch_size'],
    [{ epochs: -1 }, 'config.epochs'],
    [{ required_device: 42 }, 'config.required_device'],
    [{ estimated_memory: '-5' }, 'config.estimated_memory'],
    [{ estimated_duration: '99999999999999999999' }, 'config.estimated_duration'],
    [{ payment_amount: 0 }, 'config.payment_amount'],
    [{ payment_amount: Number.NaN }, 'config.payment_amount'],
    [{ payment_amount: 1e-12 }, 'config.payment_amount'],
    [{ job_id: 'has space' }, 'config.job_id'],
    [{ job_id: 'x'.repeat(129) }, 'config.job_id'],
    [{ reservation_duration_minutes: -1 }, 'config.reservation_duration_minutes'],
    [{ dataset_uri: 'a\u0000b' }, 'config.dataset_uri'],
    [{ model_definition: 'x'.repeat(1024 * 1024 + 1) }, 'config.model_definition'],
    [{ payment_address: 'w\u0007' }, 'config.payment_address'],
    [{ payment_amount: 1e12 }, 'config.payment_amount'],
  ])('names the bad field of %p', (over, field) => {
    expect(fieldOf(() => toJobSpec(over === null ? null : baseConfig(over), 9))).toBe(field);
  });
});

describe('isSignature', () => {
  it('takes base58 of exactly 64 bytes, not any 86–88 base58 characters (a real RPC answers the others with an error)', () => {
    const real = '5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW';
    expect(isSignature(real)).toBe(true);
    expect(isSignature('z'.repeat(88))).toBe(false); // 65 bytes
    expect(isSignature('2'.repeat(86))).toBe(false); // 63 bytes
    expect(isSignature('1'.repeat(86))).toBe(false); // 86 zero bytes
    expect(isSignature('0'.repeat(88))).toBe(false); // not base58
  });
});

describe('toAssignedJobConfig', () => {
  it('sends the dataset as remote:// so a shipping node waits for the Engine instead of running it twice', () => {
    const spec = toJobSpec(baseConfig({ job_id: 'j1' }), 9);
    const cfg = toAssignedJobConfig(spec, 9);
    expect(cfg).toMatchObject({ job_id: 'j1', job_type: 1, required_device: 2, batch_size: 32, epochs: 10, payment_amount: 1.5 });
    expect(cfg.dataset_uri).toBe('remote://file:///data/mnist');
    expect(toAssignedJobConfig({ ...spec, datasetUri: 'remote://abc' }, 9).dataset_uri).toBe('remote://abc');
  });
});

describe('toNodeRegistration', () => {
  const info = (over: Partial<NodeInfo> = {}) =>
    ({
      node_id: 'node_1700000000',
      name: '',
      version: { major: 1, minor: 2, patch: 3, build: '' },
      devices: [{ device_type: 2, device_name: 'RTX', memory_total: '0', memory_available: '0', vram_total: String(8 * 2 ** 30), vram_available: '0', compute_units: 0, supports_fp64: false, supports_fp16: true, gpu_model: 'RTX', driver_version: '', cuda_version: '', pcie_generation: 0, pcie_lanes: 0, compute_capability: 0 }],
      cpu_cores: 8,
      ram_total: String(32 * 2 ** 30),
      ram_available: '0',
      ip_address: '192.168.1.7',
      port: 0,
      region: 'unknown',
      wallet_address: '',
      supported_formats: [],
      available_runtimes: [],
      max_model_size: '0',
      staked_amount: 0,
      ...over,
    }) as unknown as NodeInfo;

  it('defaults the port to the shipping P2P port and names unnamed nodes', () => {
    const { claimedId, reg } = toNodeRegistration(info(), '10.0.0.1');
    expect(claimedId).toBe('node_1700000000');
    expect(reg).toMatchObject({ port: 50052, ipAddress: '192.168.1.7', name: 'CyxWiz-Node-node_170' });
    expect(reg.devices[0]).toMatchObject({ deviceType: 'CUDA', vramTotal: 8 * 2 ** 30 });
    expect(reg.profile.version).toBe('1.2.3');
  });

  it('falls back to the caller address and validates fields', () => {
    expect(toNodeRegistration(info({ ip_address: '' }), '10.0.0.1').reg.ipAddress).toBe('10.0.0.1');
    expect(fieldOf(() => toNodeRegistration(null, 'x'))).toBe('info');
    expect(fieldOf(() => toNodeRegistration(info({ port: 70000 }), 'x'))).toBe('info.port');
    expect(fieldOf(() => toNodeRegistration(info({ ram_total: '-1' }), 'x'))).toBe('info.ram_total');
  });

  it('takes no wallet (owed until it registers one) or a Solana address, nothing else: a bad one could never be paid', () => {
    const wallet = 'So11111111111111111111111111111111111111112';
    expect(toNodeRegistration(info({ wallet_address: wallet }), 'x').reg.walletAddress).toBe(wallet);
    expect(toNodeRegistration(info({ wallet_address: '' }), 'x').reg.walletAddress).toBe('');
    for (const bad of ['0x52908400098527886E0F7030069857D2E4169EE7', 'not-a-wallet', `${wallet}1`]) {
      expect(fieldOf(() => toNodeRegistration(info({ wallet_address: bad }), 'x'))).toBe('info.wallet_address');
    }
  });

  it('keeps announced pricing whole, also without an hourly price (the list price is charged), and refuses a bad price', () => {
    const perJob = { billing_model: 2, price_per_hour: 0, price_per_job_base: 5, free_tier_available: true } as unknown as NodeInfo['pricing'];
    expect(toNodeRegistration(info({ pricing: perJob }), 'x').reg.pricing).toMatchObject({ billing_model: 2, price_per_job_base: 5, free_tier_available: true, price_per_hour: 0 });
    expect(toNodeRegistration(info(), 'x').reg.pricing).toBeUndefined();
    for (const price of [-1, Number.NaN, Number.POSITIVE_INFINITY, 2e6]) {
      const bad = { billing_model: 0, price_per_hour: price } as unknown as NodeInfo['pricing'];
      expect(fieldOf(() => toNodeRegistration(info({ pricing: bad }), 'x'))).toBe('info.pricing.price_per_hour');
    }
  });

  it('reads grpc-js peer strings', () => {
    expect(peerIp('ipv4:127.0.0.1:5555')).toBe('127.0.0.1');
    expect(peerIp('ipv6:[::1]:5555')).toBe('::1');
    expect(peerIp('10.1.2.3:80')).toBe('10.1.2.3');
  });
});

describe('metricsValue', () => {
  it('keeps finite values and leaves out NaN and infinities: a diverged training still reports (and completes)', () => {
    expect(metricsValue({ loss: NaN, accuracy: 0.5, lr: Infinity, step: -Infinity }, 'final_metrics')).toEqual({ accuracy: 0.5 });
    expect(metricsValue(undefined, 'metrics')).toEqual({});
    expect(fieldOf(() => metricsValue({ ['x'.repeat(300)]: 1 }, 'metrics'))).toBe('metrics');
    // A report with more names than a job keeps still counts: the first 100 are kept.
    const many = Object.fromEntries(Array.from({ length: 150 }, (_, i) => [`m${i}`, i]));
    expect(Object.keys(metricsValue(many, 'metrics'))).toEqual(Array.from({ length: 100 }, (_, i) => `m${i}`));
  });
});

describe('toJobStatus', () => {
  it('maps a row to the protocol JobStatus', () => {
    const row = {
      id: 'j',
      status: 'completed',
      progress: 1,
      assignedNodeId: 'n',
      startedAt: new Date(1_000_000),
      endedAt: new Date(2_000_500),
      errorMessage: null,
      errorCode: null,
      metrics: { loss: 0.1 },
      currentEpoch: 10,
    } as unknown as JobRow;
    expect(toJobStatus(row)).toEqual({
      job_id: 'j',
      status: 1,
      progress: 1,
      current_node_id: 'n',
      start_time: '1000',
      end_time: '2000',
      error: null,
      metrics: { loss: 0.1 },
      current_epoch: 10,
    });
  });
});

describe('toProtocolFailure', () => {
  it('puts domain errors in OK replies with their HTTP-like code', () => {
    expect(toProtocolFailure(new ValidationError('job_id', 'is required')).failure).toEqual({
      status: 6,
      error: { code: 400, message: 'job_id: is required' },
    });
    expect(toProtocolFailure(new NotFoundError('job', 'x')).failure.error.code).toBe(404);
    expect(toProtocolFailure(new ConflictError('done')).failure.error.code).toBe(409);
    expect(toProtocolFailure(new UnavailableError('down')).failure).toMatchObject({ status: 2, error: { code: 503 } });
    expect(toProtocolFailure(new Error('boom'))).toEqual({ failure: { status: 2, error: { code: 500, message: 'internal server error' } }, unexpected: true });
  });
});

describe('REST GET /api/jobs/:id match', () => {
  const first = { ranked: [{ nodeId: 'a' }] };
  const second = { ranked: [{ nodeId: 'b' }] };

  it('is the latest match among the events', () => {
    expect(latestMatch([{ toStatus: 'assigned', data: { match: first } }, { toStatus: 'running', data: {} }])).toEqual(first);
    expect(latestMatch([{ toStatus: 'assigned', data: { match: first } }, { toStatus: 'queued', data: { lostNode: 'a' } }, { toStatus: 'assigned', data: { match: second } }])).toEqual(second);
  });

  it('leaves out the queue position the look saw: the job\'s own queuePosition is the live one', () => {
    expect(latestMatch([{ toStatus: 'queued', data: { match: { ...first, queuePosition: 7 } } }])).toEqual(first);
  });

  it('is none once the job went back to the queue, until it is matched again', () => {
    expect(latestMatch([{ toStatus: 'assigned', data: { match: first } }, { toStatus: 'running' }, { toStatus: 'queued', data: { lostNode: 'a' } }])).toBeNull();
    expect(latestMatch([{ toStatus: 'pending', data: null }])).toBeNull();
    expect(latestMatch([])).toBeNull();
  });
});
