import * as grpc from '@grpc/grpc-js';
import http2 from 'node:http2';
import { performance } from 'node:perf_hooks';
import { loadProtocol } from '../../src/protocol/load';
import { serveCommands } from '../lib/proc';

/**
 * Heartbeat load generator (one process; the bench runs several). Closed loop: `concurrency` unary
 * NodeService.Heartbeat calls in flight over `channels` separate HTTP/2 connections, cycling through this
 * process's share of the simulated node ids. The same generator drives the echo baseline and the real API.
 *
 * Two clients: `grpc-js` (the library nodes would use) and `http2`, plain gRPC framing over node:http2 with
 * each id's request encoded once up front — a cheaper generator, so more of the 2 cores go to the server.
 */
type HeartbeatClient = grpc.Client & {
  Heartbeat(req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: any) => void): void;
};

const { NodeService } = loadProtocol();
const RAM_TOTAL = String(32 * 2 ** 30);
const RAM_AVAILABLE = String(16 * 2 ** 30);

function clients(target: string, channels: number): HeartbeatClient[] {
  // A local subchannel pool per client: each client gets its own TCP connection.
  return Array.from({ length: channels }, () => new NodeService(target, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as HeartbeatClient);
}

const method = loadProtocol().packageDefinition['cyxwiz.protocol.NodeService'] as unknown as Record<
  string,
  { path: string; requestSerialize(v: unknown): Buffer; responseDeserialize(b: Buffer): any }
>;
const HB = method.Heartbeat;

function requestOf(nodeId: string): unknown {
  return { node_id: nodeId, current_status: { node_id: nodeId, is_online: true, ram_available: RAM_AVAILABLE, ram_total: RAM_TOTAL }, active_jobs: [] };
}

/** A gRPC message frame: flag 0 (not compressed), 4-byte length, the message. */
function frame(message: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out.writeUInt8(0, 0);
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

const H2_HEADERS = {
  ':method': 'POST',
  ':path': HB.path,
  'content-type': 'application/grpc',
  te: 'trailers',
  'grpc-timeout': '10S',
};

/** One unary call over a raw HTTP/2 session; true when the reply is SUCCESS with keep_alive. */
function beatH2(session: http2.ClientHttp2Session, body: Buffer): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const req = session.request(H2_HEADERS);
    const chunks: Buffer[] = [];
    let grpcStatus: string | undefined;
    req.on('response', (headers) => {
      if (headers['grpc-status'] !== undefined) grpcStatus = String(headers['grpc-status']); // trailers-only reply
    });
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('trailers', (t) => (grpcStatus = String(t['grpc-status'])));
    req.on('error', reject);
    req.on('close', () => {
      if (grpcStatus !== '0') return reject(new Error(`grpc-status ${grpcStatus ?? 'missing'}`));
      const data = Buffer.concat(chunks);
      if (data.length < 5) return resolve(false);
      const res = HB.responseDeserialize(data.subarray(5, 5 + data.readUInt32BE(1)));
      resolve(res?.status === 1 && res?.keep_alive === true);
    });
    req.end(body);
  });
}

async function h2Sessions(target: string, count: number): Promise<http2.ClientHttp2Session[]> {
  return Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<http2.ClientHttp2Session>((resolve, reject) => {
          const s = http2.connect(`http://${target}`);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        }),
    ),
  );
}

/** Sends heartbeats for ids[i]; one call at a time per caller. */
async function makeSender(client: 'grpc-js' | 'http2', target: string, channels: number, ids: string[]) {
  if (client === 'http2') {
    const sessions = await h2Sessions(target, channels);
    const bodies = new Map(ids.map((id) => [id, frame(HB.requestSerialize(requestOf(id)))]));
    return {
      send: (worker: number, id: string) => beatH2(sessions[worker % sessions.length], bodies.get(id)!),
      close: () => sessions.forEach((s) => s.close()),
    };
  }
  const cs = clients(target, channels);
  await Promise.all(cs.map((c) => new Promise<void>((resolve) => c.waitForReady(Date.now() + 10_000, () => resolve()))));
  return { send: (worker: number, id: string) => beat(cs[worker % cs.length], id), close: () => cs.forEach((c) => c.close()) };
}

function beat(client: HeartbeatClient, nodeId: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    client.Heartbeat(
      requestOf(nodeId),
      new grpc.Metadata(),
      { deadline: Date.now() + 10_000 },
      (err, res) => (err ? reject(err) : resolve(res?.status === 1 && res?.keep_alive === true)),
    );
  });
}

const sleepUntil = (t: number) => new Promise((r) => setTimeout(r, Math.max(0, t - Date.now())));

interface RunCommand {
  client: 'grpc-js' | 'http2';
  target: string;
  ids: string[];
  concurrency: number;
  channels: number;
  /** Epoch ms: start sending; count from measureFrom; stop at measureTo. */
  startAt: number;
  measureFrom: number;
  measureTo: number;
}

serveCommands({
  /** Sends one heartbeat for every id (the server learns them; unknown ids get a minimal record once). */
  async prime(msg: { target: string; ids: string[]; concurrency: number; channels: number; client: 'grpc-js' | 'http2' }) {
    const sender = await makeSender(msg.client, msg.target, msg.channels, msg.ids);
    const t0 = performance.now();
    let next = 0;
    let failed = 0;
    await Promise.all(
      Array.from({ length: msg.concurrency }, async (_, w) => {
        for (let i = next++; i < msg.ids.length; i = next++) {
          const ok = await sender.send(w, msg.ids[i]).catch(() => false);
          if (!ok) failed += 1;
        }
      }),
    );
    sender.close();
    return { ms: performance.now() - t0, failed };
  },

  async run(msg: RunCommand) {
    // Connect (and encode) before the clock starts.
    const sender = await makeSender(msg.client, msg.target, msg.channels, msg.ids);
    await sleepUntil(msg.startAt);
    let next = Math.floor(Math.random() * msg.ids.length);
    let ok = 0;
    let bad = 0;
    let errors = 0;
    let lastError = '';
    const latencies: number[] = [];
    await Promise.all(
      Array.from({ length: msg.concurrency }, async (_, w) => {
        while (Date.now() < msg.measureTo) {
          const id = msg.ids[next++ % msg.ids.length];
          const t0 = performance.now();
          try {
            const good = await sender.send(w, id);
            const doneAt = Date.now();
            if (doneAt >= msg.measureFrom && doneAt < msg.measureTo) {
              if (good) {
                ok += 1;
                latencies.push(performance.now() - t0);
              } else bad += 1;
            }
          } catch (err) {
            errors += 1;
            lastError = (err as Error).message;
          }
        }
      }),
    );
    sender.close();
    latencies.sort((a, b) => a - b);
    const q = (p: number) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.ceil(p * latencies.length) - 1)] : NaN);
    return { ok, bad, errors, lastError, windowS: (msg.measureTo - msg.measureFrom) / 1000, p50Ms: q(0.5), p99Ms: q(0.99) };
  },
});
process.send?.({ ready: true });
