import type { DeviceType } from './job';

export interface DeviceCapsSpec {
  deviceType: DeviceType;
  deviceName: string;
  /** Bytes. */
  memoryTotal: number;
  memoryAvailable: number;
  computeUnits: number;
  supportsFp64: boolean;
  supportsFp16: boolean;
  gpuModel: string;
  vramTotal: number;
  vramAvailable: number;
  driverVersion: string;
  cudaVersion: string;
  pcieGeneration: number;
  pcieLanes: number;
  computeCapability: number;
}

/** The memory a device offers a job: VRAM for accelerators that report it, otherwise its memory. */
export function deviceMemory(device: Pick<DeviceCapsSpec, 'vramTotal' | 'memoryTotal'>): number {
  return device.vramTotal > 0 ? device.vramTotal : device.memoryTotal;
}

export interface JobRequirements {
  requiredDevice: DeviceType;
  /** Bytes; 0 = no requirement. */
  estimatedMemory: number;
}

export interface NodeCapabilities {
  devices: Pick<DeviceCapsSpec, 'deviceType' | 'vramTotal' | 'memoryTotal'>[];
  ramTotal: number;
}

/**
 * Whether a node can run a job: a device of the required type with enough memory. A job without a device
 * requirement runs anywhere with enough memory on some device or in RAM. Returns the reason when it can't.
 */
export function fitsJob(node: NodeCapabilities, req: JobRequirements): { fits: true } | { fits: false; reason: string } {
  const need = req.estimatedMemory;
  if (req.requiredDevice === 'UNKNOWN') {
    const best = Math.max(node.ramTotal, ...node.devices.map(deviceMemory));
    return need <= best ? { fits: true } : { fits: false, reason: `needs ${need} bytes of memory, has ${best}` };
  }
  if (req.requiredDevice === 'CPU') {
    const hasCpu = node.devices.some((d) => d.deviceType === 'CPU') || node.ramTotal > 0;
    if (!hasCpu) return { fits: false, reason: 'no CPU device' };
    const best = Math.max(node.ramTotal, ...node.devices.filter((d) => d.deviceType === 'CPU').map(deviceMemory));
    return need <= best ? { fits: true } : { fits: false, reason: `needs ${need} bytes of RAM, has ${best}` };
  }
  const candidates = node.devices.filter((d) => d.deviceType === req.requiredDevice);
  if (candidates.length === 0) return { fits: false, reason: `no ${req.requiredDevice} device` };
  const best = Math.max(...candidates.map(deviceMemory));
  return need <= best
    ? { fits: true }
    : { fits: false, reason: `needs ${need} bytes on a ${req.requiredDevice} device, best has ${best}` };
}
