import * as grpc from '@grpc/grpc-js';
import { protocolClient } from '../support/grpc-clients';
import type { SimNode } from '../support/sim-node';
import { useSystem } from '../support/system';
import { collect, eventually, jobConfig, nodePool, S, submitJob, unfittable, waitForAssignment, type ProtocolClient } from './helpers';

const sys = useSystem({ name: 'bad-input' });
const nodes = nodePool(sys);
let engine: ProtocolClient;
let nodeApi: ProtocolClient;
let jobStatusApi: ProtocolClient;
let reservationApi: ProtocolClient;
let node: SimNode;
/** A real job held by `node`, so node reports about it reach validation past the lookup. */
let heldJobId: string;

beforeAll(async () => {
  engine = protocolClient('JobService', sys().grpcAddress);
  nodeApi = protocolClient('NodeService', sys().grpcAddress);
  jobStatusApi = protocolClient('JobStatusService', sys().grpcAddress);
  reservationApi = protocolClient('JobReservationService', sys().grpcAddress);
  node = await nodes.start({ name: 'validating-node' });
  heldJobId = await submitJob(engine, jobConfig());
  await waitForAssignment(engine, heldJobId);
});

afterAll(async () => {
  for (const c of [engine, nodeApi, jobStatusApi, reservationApi]) c?.close();
  await nodes.stopAll();
});

/** Row counts of every table a request could write to. */
async function counts(): Promise<Record<string, string>> {
  const [row] = await sys().query<Record<string, string>>(`
    SELECT (SELECT count(*) FROM jobs)::text AS jobs,
           (SELECT count(*) FROM job_events)::text AS job_events,
           (SELECT count(*) FROM payments)::text AS payments,
           (SELECT count(*) FROM nodes)::text AS nodes,
           (SELECT count(*) FROM node_job_cancels)::text AS node_job_cancels,
           (SELECT max(updated_at)::text FROM jobs) AS jobs_updated`);
  return row;
}

/** The parts of a reply that say how a request was refused (GetJobStatus nests its status in a JobStatus). */
function outcome(res: any): { status: number | undefined; code: number | undefined; message: string | undefined } {
  return { status: typeof res.status === 'object' && res.status !== null ? res.status.status : res.status, code: res.error?.code, message: res.error?.message };
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Each bad request: the RPC, its request, and the field the error must name. */
type Case = [label: string, client: () => ProtocolClient, method: string, request: () => Record<string, unknown>, field: string];

const submit = (config: Record<string, unknown> | undefined) => ({ config });
const validationCases: Case[] = [
  ['SubmitJob without config', () => engine, 'SubmitJob', () => ({}), 'config'],
  ['SubmitJob with payment_amount 0', () => engine, 'SubmitJob', () => submit(jobConfig({ payment_amount: 0 })), 'config.payment_amount'],
  ['SubmitJob with payment_amount -1', () => engine, 'SubmitJob', () => submit(jobConfig({ payment_amount: -1 })), 'config.payment_amount'],
  ['SubmitJob with payment_amount NaN', () => engine, 'SubmitJob', () => submit(jobConfig({ payment_amount: NaN })), 'config.payment_amount'],
  ['SubmitJob with payment_amount Infinity', () => engine, 'SubmitJob', () => submit(jobConfig({ payment_amount: Infinity })), 'config.payment_amount'],
  ['SubmitJob with payment_amount 1e-12 (finer than the mint)', () => engine, 'SubmitJob', () => submit(jobConfig({ payment_amount: 1e-12 })), 'config.payment_amount'],
  // 10^10 tokens = 10^19 smallest units: more than a Postgres bigint (int64) holds.
  ['SubmitJob with payment_amount 1e10 (beyond int64 units)', () => engine, 'SubmitJob', () => submit(jobConfig({ payment_amount: 1e10 })), 'config.payment_amount'],
  ['SubmitJob with epochs 0', () => engine, 'SubmitJob', () => submit(jobConfig({ epochs: 0 })), 'config.epochs'],
  ['SubmitJob with batch_size -1', () => engine, 'SubmitJob', () => submit(jobConfig({ batch_size: -1 })), 'config.batch_size'],
  ['SubmitJob with job_type UNKNOWN', () => engine, 'SubmitJob', () => submit(jobConfig({ job_type: 0 })), 'config.job_type'],
  ['SubmitJob with an empty dataset_uri', () => engine, 'SubmitJob', () => submit(jobConfig({ dataset_uri: '' })), 'config.dataset_uri'],
  ['SubmitJob with a blank dataset_uri', () => engine, 'SubmitJob', () => submit(jobConfig({ dataset_uri: '   ' })), 'config.dataset_uri'],
  // Postgres text and jsonb cannot hold U+0000.
  ['SubmitJob with a NUL character in dataset_uri', () => engine, 'SubmitJob', () => submit(jobConfig({ dataset_uri: 'remote://a\u0000b' })), 'config.dataset_uri'],
  // Larger than Temporal's 2 MB payload limit for the workflow's input.
  [
    'SubmitJob with a 3 MiB model_definition',
    () => engine,
    'SubmitJob',
    () => submit(jobConfig({ model_definition: 'x'.repeat(3 * 2 ** 20) })),
    'config.model_definition',
  ],
  // Under the model_definition limit, but twice as large once escaped as JSON: too large for a workflow's input.
  ['SubmitJob with 1 MiB of quotes as model_definition', () => engine, 'SubmitJob', () => submit(jobConfig({ model_definition: '"'.repeat(2 ** 20) })), 'config'],
  [
    'SubmitJob with 300 hyperparameters',
    () => engine,
    'SubmitJob',
    () => submit(jobConfig({ hyperparameters: Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`h${i}`, '1'])) })),
    'config.hyperparameters',
  ],
  ['SubmitJob with job_id "bad id!"', () => engine, 'SubmitJob', () => submit(jobConfig({ job_id: 'bad id!' })), 'config.job_id'],
  ['SubmitJob with job_id "../etc/passwd"', () => engine, 'SubmitJob', () => submit(jobConfig({ job_id: '../etc/passwd' })), 'config.job_id'],
  ['SubmitJob with a 129-character job_id', () => engine, 'SubmitJob', () => submit(jobConfig({ job_id: 'j'.repeat(129) })), 'config.job_id'],
  ['GetJobStatus with an empty job_id', () => engine, 'GetJobStatus', () => ({ job_id: '' }), 'job_id'],
  ['CancelJob with an empty job_id', () => engine, 'CancelJob', () => ({ job_id: '' }), 'job_id'],
  ['DeleteJob with an empty job_id', () => engine, 'DeleteJob', () => ({ job_id: '' }), 'job_id'],
  ['Heartbeat with an empty node_id', () => nodeApi, 'Heartbeat', () => ({ node_id: '' }), 'node_id'],
  ['Heartbeat with a NUL character in node_id', () => nodeApi, 'Heartbeat', () => ({ node_id: 'node\u0000x' }), 'node_id'],
  ['RegisterNode without info', () => nodeApi, 'RegisterNode', () => ({ authentication_token: 'jwt' }), 'info'],
  ['RegisterNode with port 70000', () => nodeApi, 'RegisterNode', () => ({ info: { ip_address: '127.0.0.1', port: 70000 } }), 'info.port'],
  ['RegisterNode with ip_address "10.0.0.1:50052"', () => nodeApi, 'RegisterNode', () => ({ info: { ip_address: '10.0.0.1:50052', port: 50052 } }), 'info.ip_address'],
  ['NotifyJobAccepted with an empty job_id', () => nodeApi, 'NotifyJobAccepted', () => ({ node_id: node.nodeId, job_id: '' }), 'job_id'],
  [
    'ReportProgress with progress 2',
    () => nodeApi,
    'ReportProgress',
    () => ({ node_id: node.nodeId, job_id: heldJobId, status: { job_id: heldJobId, status: S.IN_PROGRESS, progress: 2 } }),
    'status.progress',
  ],
  [
    'ReportProgress with progress -0.5',
    () => nodeApi,
    'ReportProgress',
    () => ({ node_id: node.nodeId, job_id: heldJobId, status: { job_id: heldJobId, status: S.IN_PROGRESS, progress: -0.5 } }),
    'status.progress',
  ],
  ['ReportCompletion with an empty node_id', () => nodeApi, 'ReportCompletion', () => ({ node_id: '', job_id: heldJobId }), 'node_id'],
  [
    'UpdateJobStatus with progress 1.5',
    () => jobStatusApi,
    'UpdateJobStatus',
    () => ({ node_id: node.nodeId, job_id: heldJobId, status: S.IN_PROGRESS, progress: 1.5 }),
    'progress',
  ],
  // Ids reach Postgres and Temporal: a NUL or a path is refused naming the field, not answered with a 500.
  ['EngineHeartbeat with a NUL in reservation_id', () => reservationApi, 'EngineHeartbeat', () => ({ reservation_id: 'a\u0000b', job_id: '' }), 'reservation_id'],
  ['EngineHeartbeat with job_id "../x"', () => reservationApi, 'EngineHeartbeat', () => ({ reservation_id: 'some-reservation', job_id: '../x' }), 'job_id'],
  ['GetReservation with reservation_id "a b"', () => reservationApi, 'GetReservation', () => ({ reservation_id: 'a b' }), 'reservation_id'],
  ['ReleaseReservation with a 2000-character reason', () => reservationApi, 'ReleaseReservation', () => ({ reservation_id: 'some-reservation', reason: 'x'.repeat(2000) }), 'reason'],
  ['ReportJobCompleteFromNode with a NUL in node_id', () => reservationApi, 'ReportJobCompleteFromNode', () => ({ reservation_id: 'some-reservation', job_id: 'j', node_id: 'n\u0000' }), 'node_id'],
  ['ReserveNode with a NUL in job_config.dataset_uri', () => reservationApi, 'ReserveNode', () => ({ node_id: node.nodeId, user_wallet: 'w', duration_minutes: 60, job_config: { dataset_uri: 'a\u0000' } }), 'job_config.dataset_uri'],
  // One node's bad numbers must not fail the batch every node's heartbeat is written in.
  ['Heartbeat with ram_available beyond int64', () => nodeApi, 'Heartbeat', () => ({ node_id: node.nodeId, current_status: { ram_available: '9223372036854775807' } }), 'current_status.ram_available'],
  ['RegisterNode with price_per_hour 1e200', () => nodeApi, 'RegisterNode', () => ({ info: { ip_address: '127.0.0.1', port: 50052, pricing: { price_per_hour: 1e200 } } }), 'info.pricing.price_per_hour'],
  ['RegisterNode with a NUL in supported_formats', () => nodeApi, 'RegisterNode', () => ({ info: { ip_address: '127.0.0.1', port: 50052, supported_formats: ['ONNX', 'x\u0000'] } }), 'info.supported_formats[1]'],
  [
    'RegisterNode with 65 devices (every NodeInfo the Engine browses carries them)',
    () => nodeApi,
    'RegisterNode',
    () => ({ info: { ip_address: '127.0.0.1', port: 50052, devices: Array.from({ length: 65 }, () => ({ device_type: 2, memory_total: String(2 ** 30) })) } }),
    'info.devices',
  ],
  ['RegisterNode with port 65534 (AssignJob would go to 65537)', () => nodeApi, 'RegisterNode', () => ({ info: { ip_address: '127.0.0.1', port: 65534 } }), 'info.port'],
  // A failure reason with a NUL could never be written: refused before it changes anything.
  ['ReportJobResult with a NUL in error_message', () => jobStatusApi, 'ReportJobResult', () => ({ node_id: node.nodeId, job_id: heldJobId, final_status: S.FAILED, error_message: 'x\u0000' }), 'error_message'],
  ['ReportJobResult with final_status IN_PROGRESS', () => jobStatusApi, 'ReportJobResult', () => ({ node_id: node.nodeId, job_id: heldJobId, final_status: S.IN_PROGRESS }), 'final_status'],
  ['ReportCompletion with result.status 99', () => nodeApi, 'ReportCompletion', () => ({ node_id: node.nodeId, job_id: heldJobId, result: { status: 99 } }), 'result.status'],
  ['UpdateJobStatus with a NUL in log_message', () => jobStatusApi, 'UpdateJobStatus', () => ({ node_id: node.nodeId, job_id: heldJobId, status: S.IN_PROGRESS, progress: 0.5, log_message: 'a\u0000' }), 'log_message'],
];

describe('every RPC with bad input answers OK with STATUS_FAILED and Error{400} naming the field, and writes nothing', () => {
  test.each(validationCases)('%s', async (_label, client, method, request, field) => {
    const before = await counts();
    const res = await client().call(method, request());
    expect(outcome(res)).toEqual({ status: S.FAILED, code: 400, message: expect.stringMatching(new RegExp(`^${escapeRegExp(field)}: `)) });
    expect(await counts()).toEqual(before);
  });

  test('Heartbeat with an empty node_id still says keep_alive (a shipping node treats false as a lost server)', async () => {
    const res = await nodeApi.call('Heartbeat', { node_id: '' });
    expect(res).toMatchObject({ status: S.FAILED, keep_alive: true });
  });

  test('GetNodeMetrics with start_time after end_time is a 400 naming start_time', async () => {
    const res = await nodeApi.call('GetNodeMetrics', { node_id: node.nodeId, start_time: '2000', end_time: '1000' });
    expect(res.error).toMatchObject({ code: 400 });
    expect(res.error.message).toMatch(/^start_time:/);
    expect(res.metrics).toEqual([]);
  });

  test('GetNodeMetrics with an end_time past the year 9999 is a 400 naming end_time', async () => {
    const res = await nodeApi.call('GetNodeMetrics', { node_id: node.nodeId, start_time: '1000', end_time: '900000000000000' });
    expect(res.error).toMatchObject({ code: 400 });
    expect(res.error.message).toMatch(/^end_time:/);
  });
});

describe('lists and REST routes refuse bad parameters naming them', () => {
  test('ListReservations with a NUL in user_id is INVALID_ARGUMENT naming user_id', async () => {
    await expect(reservationApi.call('ListReservations', { user_id: 'w\u0000' })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/^user_id: /) });
  });

  test('ListJobs with a page token it did not issue: an empty page, the reason in the response metadata', async () => {
    for (const token of ['!!!!', 'IA', 'not-a-token']) {
      const { response, metadata } = await engine.callWithMetadata('ListJobs', { page_size: 10, page_token: token });
      expect(response).toMatchObject({ jobs: [], total_count: 0 });
      expect(metadata.get('x-cyxwiz-error-code')).toEqual(['400']);
      expect(String(metadata.get('x-cyxwiz-error-message')[0])).toMatch(/^page_token: /);
    }
  });

  test.each([
    ['/api/jobs/%00x', 'id'],
    ['/api/jobs?submitter=%00x', 'submitter'],
    ['/api/jobs?limit=0x10', 'limit'],
    ['/api/nodes/a%20b', 'id'],
    ['/api/reservations?active=yes', 'active'],
    ['/api/reservations?pageToken=xx', 'pageToken'],
    ['/api/reservations/a%20b', 'id'],
    ['/api/jobs/%FF', 'path'],
  ])('GET %s → 400 naming %s', async (path, field) => {
    const res = await fetch(`${sys().restUrl}${path}`);
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { code: 400, field } });
  });

  test('an empty query value means absent, and limit=0 counts without rows, on every list', async () => {
    expect((await fetch(`${sys().restUrl}/api/jobs?status=`)).status).toBe(200);
    const counted = (await (await fetch(`${sys().restUrl}/api/reservations?limit=0`)).json()) as { rows: unknown[]; total: number };
    expect(counted).toMatchObject({ rows: [], total: expect.any(Number) });
    expect(((await (await fetch(`${sys().restUrl}/api/jobs?limit=0`)).json()) as { jobs: unknown[] }).jobs).toEqual([]);
  });

  test('a malformed path is a 400 and a reclaim body that is not JSON a 400, one too large a 413', async () => {
    expect((await fetch(`${sys().restUrl}/api/jobs/%ZZ`)).status).toBe(400);
    const post = (body: string) =>
      fetch(`${sys().restUrl}/api/escrows/some-job/reclaim`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const notJson = await post('{');
    expect(notJson.status).toBe(400);
    expect(await notJson.json()).toMatchObject({ error: { field: 'body' } });
    expect((await post(JSON.stringify({ pad: 'x'.repeat(10_000) }))).status).toBe(413);
  });
});

describe('unknown ids give 404 in an OK reply, and write nothing', () => {
  const unknown = 'no-such-job-0000';
  const notFound: Case[] = [
    ['GetJobStatus', () => engine, 'GetJobStatus', () => ({ job_id: unknown }), ''],
    ['CancelJob', () => engine, 'CancelJob', () => ({ job_id: unknown, reason: 'x' }), ''],
    ['ReportCompletion', () => nodeApi, 'ReportCompletion', () => ({ node_id: node.nodeId, job_id: unknown, result: { job_id: unknown, status: S.SUCCESS } }), ''],
    ['ReportProgress', () => nodeApi, 'ReportProgress', () => ({ node_id: node.nodeId, job_id: unknown, status: { job_id: unknown, status: S.IN_PROGRESS, progress: 0.1 } }), ''],
    ['NotifyJobAccepted', () => nodeApi, 'NotifyJobAccepted', () => ({ node_id: node.nodeId, job_id: unknown }), ''],
    ['GetNodeMetrics', () => nodeApi, 'GetNodeMetrics', () => ({ node_id: 'no-such-node' }), ''],
  ];
  test.each(notFound)('%s', async (_label, client, method, request) => {
    const before = await counts();
    const res = await client().call(method, request());
    // GetNodeMetricsResponse has no status field.
    const expected = { status: method === 'GetNodeMetrics' ? undefined : S.FAILED, code: 404, message: expect.stringMatching(/not found/) };
    expect(outcome(res)).toEqual(expected);
    // The Engine copies GetJobStatus's JobStatus into its record of the job: it keeps the job's id.
    if (method === 'GetJobStatus') expect(res.status.job_id).toBe(unknown);
    expect(await counts()).toEqual(before);
  });

  test('DeleteJob of an unknown job succeeds, as the original server did, and writes nothing', async () => {
    const before = await counts();
    expect(await engine.call('DeleteJob', { job_id: unknown })).toMatchObject({ status: S.SUCCESS });
    expect(await counts()).toEqual(before);
  });

  test('StreamJobUpdates of an unknown job sends one 404 update and ends', async () => {
    const stream = engine.stream('StreamJobUpdates', { job_id: unknown });
    const messages: any[] = [];
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (m) => messages.push(m));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    expect(messages).toHaveLength(1);
    expect(messages[0].status).toMatchObject({ status: S.FAILED, error: { code: 404 } });
  });
});

test('one job has at most 100 open StreamJobUpdates; they share their reads and all see each change; the 101st is told 429 and ends', async () => {
  const jobId = await submitJob(engine, unfittable());
  await eventually('the job to be queued', async () => (await sys().query<{ status: string }>('SELECT status FROM jobs WHERE id = $1', [jobId]))[0]?.status === 'queued');
  const open = Array.from({ length: 100 }, () => collect(engine.stream('StreamJobUpdates', { job_id: jobId })));
  await eventually('every stream to show the queued job', () => open.every((s) => s.messages.length >= 1));

  const extra = collect(engine.stream('StreamJobUpdates', { job_id: jobId }));
  expect(await extra.done).toEqual({});
  expect(extra.messages).toEqual([expect.objectContaining({ status: expect.objectContaining({ error: expect.objectContaining({ code: 429 }) }) })]);

  // A change reaches every one of them, and the job's end ends them all.
  expect(await engine.call('CancelJob', { job_id: jobId, reason: 'streams' }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS });
  expect(await Promise.all(open.map((s) => s.done))).toEqual(open.map(() => ({})));
  for (const s of open) expect(s.messages.at(-1).status).toMatchObject({ status: S.CANCELLED });
});

test('CancelJob with a NUL character in reason is refused with 400, and the job can still be cancelled', async () => {
  const jobId = await submitJob(engine, unfittable());
  await eventually('the job to be queued', async () => (await sys().query<{ status: string }>('SELECT status FROM jobs WHERE id = $1', [jobId]))[0]?.status === 'queued');
  const before = await counts();
  // A short deadline: a request the server cannot finish must not hang the Engine either.
  const res = await engine.call('CancelJob', { job_id: jobId, reason: 'bad\u0000reason' }, { deadlineMs: 5000 }).catch((err: Error) => ({ grpcError: err.message }));
  expect(res).toMatchObject({ status: S.FAILED, refund_issued: false, error: { code: 400 } });
  expect((res as any).error.message).toMatch(/^reason:/);
  expect(await counts()).toEqual(before);

  const ok = await engine.call('CancelJob', { job_id: jobId, reason: 'a normal reason' }, { deadlineMs: 15_000 });
  expect(ok).toMatchObject({ status: S.SUCCESS, refund_issued: true });
});

test('a refused request leaves the job it names untouched', async () => {
  const before = await sys().query('SELECT status, progress, current_epoch, metrics, updated_at::text FROM jobs WHERE id = $1', [heldJobId]);
  await nodeApi.call('ReportProgress', { node_id: node.nodeId, job_id: heldJobId, status: { job_id: heldJobId, status: S.IN_PROGRESS, progress: 2, current_epoch: 9 } });
  await nodeApi.call('ReportProgress', { node_id: 'some-other-node', job_id: heldJobId, status: { job_id: heldJobId, status: S.IN_PROGRESS, progress: 0.4 } });
  const other = await nodeApi.call('ReportCompletion', { node_id: 'some-other-node', job_id: heldJobId, result: { job_id: heldJobId, status: S.SUCCESS } });
  expect(other).toMatchObject({ status: S.FAILED, payment_released: false, error: { code: 403 } });
  expect(await sys().query('SELECT status, progress, current_epoch, metrics, updated_at::text FROM jobs WHERE id = $1', [heldJobId])).toEqual(before);
});

// Last in the file: it spends 127.0.0.1's quota of new nodes for the minute.
test('heartbeats from unknown ids beyond one address\'s 60 new nodes a minute are refused with 429 and make no record; known nodes still beat', async () => {
  const run = Date.now().toString(36);
  let refused: any;
  let made: string | undefined;
  // Up to two windows' worth: the window may have begun with this file's first registration and end meanwhile.
  for (let i = 0; i <= 120 && !refused; i++) {
    const res = await nodeApi.call('Heartbeat', { node_id: `stray-${run}-${i}` });
    if (res.status !== S.SUCCESS) refused = { ...res, nodeId: `stray-${run}-${i}` };
    else made ??= `stray-${run}-${i}`;
  }
  expect(refused).toMatchObject({ status: S.FAILED, keep_alive: true, error: { code: 429 } });
  expect(refused.error.message).toMatch(new RegExp(`^node_id: ${refused.nodeId} is not registered`));
  expect(await sys().query('SELECT id FROM nodes WHERE id = $1', [refused.nodeId])).toEqual([]);
  expect(await nodeApi.call('Heartbeat', { node_id: node.nodeId })).toMatchObject({ status: S.SUCCESS, keep_alive: true });
  // The earlier tests registered a few nodes from this address within the minute: most of these were made.
  expect(made).toBeDefined();
  expect(await nodeApi.call('Heartbeat', { node_id: made })).toMatchObject({ status: S.SUCCESS });
});
