import { useSystem } from '../support/system';
const sys = useSystem();
test('starts', async () => {
  const s = sys();
  const t0 = Date.now();
  await s.killWorker();
  await s.startWorker();
  console.log('worker restart ms', Date.now() - t0, s.grpcAddress, s.restUrl);
  const r = await fetch(`${s.restUrl}/api/health`);
  console.log(await r.json());
  expect(1).toBe(2);
});
