import { isTerminal, JOB_PHASES, phaseToStatusCode, StatusCode, statusCodeToPhases } from '../../src/domain/job';
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
