import { isTerminal, JOB_PHASES, phaseToStatusCode, StatusCode, statusCodeToPhases } from '../../src/domain/job';
import { hostPort, nodeHost } from '../../src/domain/endpoint';
import { fitsJob } from '../../src/domain/node';

const GiB = 2 ** 30;

describe('job phases and protocol status codes', () => {
  it('reports finished jobs the way the Engine recognises them', () => {
    expect(phaseToStatusCode('pending')).toBe(StatusCode.PENDING);
    expect(phaseToStatusCode('queued')).toBe(StatusCode.PENDING);
    expect(phaseToStatusCode('assigned')).toBe(StatusCode.IN_PROGRESS);
    expect(phaseToStatusCode('running')).toBe(StatusCode.IN_PROGRESS);
    expect(phaseToStatusCode('completed')).toBe(StatusCode.SUCCESS);
    expect(phaseToStatusCode('failed')).toBe(StatusCode.FAILED);
    expect(phaseToStatusCode('cancelled')).toBe(StatusCode.CANCELLED);
  });

  it('maps every phase back from its own status code', () => {
    for (const phase of JOB_PHASES) expect(statusCodeToPhases(phaseToStatusCode(phase))).toContain(phase);
    expect(statusCodeToPhases(StatusCode.UNKNOWN)).toBeUndefined();
    expect(statusCodeToPhases(StatusCode.COMPLETED)).toEqual(['completed']);
    expect(statusCodeToPhases(99)).toEqual([]);
  });

  it('knows the terminal phases', () => {
    expect(JOB_PHASES.filter(isTerminal)).toEqual(['completed', 'failed', 'cancelled']);
  });
});

describe('fitsJob', () => {
  const gpuNode = { devices: [{ deviceType: 'CUDA' as const, vramTotal: 8 * GiB, memoryTotal: 8 * GiB }], ramTotal: 32 * GiB };
  const cpuNode = { devices: [{ deviceType: 'CPU' as const, vramTotal: 0, memoryTotal: 0 }], ramTotal: 16 * GiB };

  it('needs a device of the required type with enough memory', () => {
    expect(fitsJob(gpuNode, { requiredDevice: 'CUDA', estimatedMemory: 4 * GiB })).toEqual({ fits: true });
    expect(fitsJob(gpuNode, { requiredDevice: 'CUDA', estimatedMemory: 9 * GiB })).toMatchObject({ fits: false });
    expect(fitsJob(cpuNode, { requiredDevice: 'CUDA', estimatedMemory: 0 })).toEqual({ fits: false, reason: 'no CUDA device' });
    expect(fitsJob(gpuNode, { requiredDevice: 'OPENCL', estimatedMemory: 0 })).toMatchObject({ fits: false });
  });

  it('runs CPU jobs in RAM and unconstrained jobs anywhere with enough memory', () => {
    expect(fitsJob(cpuNode, { requiredDevice: 'CPU', estimatedMemory: 8 * GiB })).toEqual({ fits: true });
    expect(fitsJob(cpuNode, { requiredDevice: 'CPU', estimatedMemory: 17 * GiB })).toMatchObject({ fits: false });
    expect(fitsJob(gpuNode, { requiredDevice: 'UNKNOWN', estimatedMemory: 30 * GiB })).toEqual({ fits: true });
    expect(fitsJob(gpuNode, { requiredDevice: 'UNKNOWN', estimatedMemory: 64 * GiB })).toMatchObject({ fits: false });
  });

  it('uses a device memory when it reports no VRAM', () => {
    const opencl = { devices: [{ deviceType: 'OPENCL' as const, vramTotal: 0, memoryTotal: 4 * GiB }], ramTotal: 0 };
    expect(fitsJob(opencl, { requiredDevice: 'OPENCL', estimatedMemory: 4 * GiB })).toEqual({ fits: true });
  });
});

describe('node endpoints', () => {
  test('a registered host is an IPv4 or IPv6 address or a DNS name; an IPv4-mapped address is its IPv4', () => {
    expect(nodeHost('192.168.1.20')).toBe('192.168.1.20');
    expect(nodeHost('::ffff:10.0.0.7')).toBe('10.0.0.7');
    expect(nodeHost('2001:db8::1')).toBe('2001:db8::1');
    expect(nodeHost('[2001:db8::1]')).toBe('2001:db8::1');
    expect(nodeHost('gpu-7.example.org')).toBe('gpu-7.example.org');
    for (const bad of ['10.0.0.1:50052', 'a b', 'x'.repeat(254), '-lead.example', 'under_score.example', '']) expect(nodeHost(bad)).toBeUndefined();
  });

  test('host:port puts an IPv6 address in brackets, so that gRPC and the Engine can dial it', () => {
    expect(hostPort('10.0.0.1', 50052)).toBe('10.0.0.1:50052');
    expect(hostPort('2001:db8::1', 50055)).toBe('[2001:db8::1]:50055');
    expect(hostPort('gpu-7.example.org', 50052)).toBe('gpu-7.example.org:50052');
  });
});
