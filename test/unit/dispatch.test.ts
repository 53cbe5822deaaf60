import { createDispatchActivities } from '../../src/activities/dispatch';
import type { JobSpec } from '../../src/domain/job';

const spec: JobSpec = {
  jobId: 'j1', jobType: 'TRAINING', priority: 'NORMAL', modelDefinition: '', hyperparameters: {}, datasetUri: 'x', batchSize: 1,
  epochs: 1, requiredDevice: 'CUDA', estimatedMemory: 0, estimatedDuration: 0, paymentUnits: '10', paymentAddress: 'p',
  escrowTxHash: '', reservationDurationMinutes: 0,
};

describe('dispatchToNode', () => {
  it('keeps clients open to at most maxNodeClients endpoints (nodes register their own), the least recently used closed first', async () => {
    const dispatch = createDispatchActivities({ timeoutMs: 2000, tokenDecimals: 9, maxNodeClients: 2 });
    try {
      // Nothing listens on these ports: each offer fails fast as unreachable (retryable), and its client stays.
      const offer = (port: number) =>
        expect(dispatch.activities.dispatchToNode({ jobId: 'j1', nodeId: `n${port}`, assignEndpoint: `127.0.0.1:${port}`, spec })).rejects.toThrow(/unreachable at 127\.0\.0\.1:/);
      await offer(1);
      await offer(2);
      expect(dispatch.openClients()).toEqual(['127.0.0.1:1', '127.0.0.1:2']);
      await offer(1); // used again: now the most recent
      await offer(3); // the least recently used (2) goes
      expect(dispatch.openClients()).toEqual(['127.0.0.1:1', '127.0.0.1:3']);
      await offer(4);
      expect(dispatch.openClients()).toEqual(['127.0.0.1:3', '127.0.0.1:4']);
    } finally {
      dispatch.close();
    }
    expect(dispatch.openClients()).toEqual([]);
  });
});
