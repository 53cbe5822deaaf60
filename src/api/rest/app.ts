import { timingSafeEqual } from 'node:crypto';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { DomainError, NotFoundError, UnauthenticatedError, UnavailableError, ValidationError } from '../../domain/errors';
import { JOB_PHASES, LIST_DEPTH, phaseToStatusCode, type JobPhase } from '../../domain/job';
import type { JobRow } from '../../db/jobs-repo';
import type { NodeRow } from '../../db/nodes-repo';
import { nodeHealth } from '../../domain/health';
import { hostPort } from '../../domain/endpoint';
import { nodeStats } from '../../domain/node-stats';
import { isSignature, requireId } from '../grpc/mappers';
import { addressKey } from '../../services/heartbeat-hub';
import { summarize } from '../grpc/unary';

export interface HealthCheck {
  name: string;
  check(): Promise<void>;
}

export interface RestDeps {
  log: Logger;
  checks: HealthCheck[];
  stats(): Promise<{ nodes: { total: number; online: number; offline: number; busy: number }; jobs: Record<JobPhase, number> }>;
  jobs: {
    get(id: string): Promise<JobRow>;
    /** The job's events, oldest first. */
    events(id: string): Promise<{ toStatus: string; data?: unknown }[]>;
    payments(id: string): Promise<unknown[]>;
    /** Jobs ahead of this one in the queue. */
    queuePosition(id: string): Promise<number>;
    list(q: { submitter?: string; phases?: JobPhase[]; limit: number; offset: number }): Promise<{ rows: Omit<JobRow, 'config'>[]; total: number }>;
  };
  nodes: {
    list(q: { limit: number; offset: number }): Promise<{ rows: unknown[]; total: number }>;
    get(id: string): Promise<unknown>;
  };
  reservations: {
    list(q: { wallet?: string; activeOnly: boolean; pageSize: number; pageToken: string }): Promise<{ rows: unknown[]; total: number; nextPageToken: string }>;
    /** The reservation with its payment legs (every pot). */
    get(id: string): Promise<unknown>;
  };
  escrows: {
    /**
     * Who is asking, from the Authorization header: the token's subject when auth is on (throws
     * UnauthenticatedError without a valid one), undefined when auth is off.
     */
    caller(authorization: string | undefined): string | undefined;
    /** @param caller who asks (a user, or an address when auth is off): new accounts are rationed per caller. */
    open(jobId: string, caller: string): Promise<{ jobId: string; escrowAccount: string; mint: string; decimals: number }>;
    /**
     * Gives a payer back a transfer into the job's escrow account that no job holds; with auth on, to the payer's
     * own user only (`authorization` is the request's header).
     */
    reclaim(jobId: string, transfer: { escrowTxHash: string; paymentAddress: string }, caller: string, authorization?: string): Promise<{ amount: string; to: string; txRef: string }>;
  };
  /** Wallets signed-in users proved are theirs (auth on). */
  walletLinks: {
    /**
     * The signed-in user, and the wallet its token names ('' when none), from the Authorization header.
     * @throws UnauthenticatedError without a valid token, ConflictError with auth off (wallets are then not tied
     * to users)
     */
    user(authorization: string | undefined): { user: string; claim: string };
    /** @param claim the wallet the user's token names ('' when none) */
    link(user: string, claim: string, wallet: string, signature: string, expiresAt: string): Promise<void>;
    list(user: string): Promise<{ wallet: string; linkedAt: Date }[]>;
    /** @param claim the wallet the user's token names. @returns whether it was linked */
    unlink(user: string, claim: string, wallet: string): Promise<boolean>;
    /** What the wallet's key signs to link it to the user, and until when it may. */
    message(user: string, wallet: string): { message: string; expiresAt: string };
  };
  version: string;
  startedAt: Date;
  /** Set: the operator routes ask for `Authorization: Bearer <operatorToken>`. */
  operatorToken?: string;
}

const jobJson = (j: Omit<JobRow, 'config'>) => ({
  id: j.id,
  status: j.status,
  statusCode: phaseToStatusCode(j.status),
  jobType: j.jobType,
  priority: j.priority,
  requiredDevice: j.requiredDevice,
  estimatedMemory: j.estimatedMemory,
  submitter: j.submitter,
  paymentUnits: j.paymentUnits.toString(),
  assignedNodeId: j.assignedNodeId,
  attempts: j.attempts,
  progress: j.progress,
  currentEpoch: j.currentEpoch,
  metrics: j.metrics,
  error: j.errorMessage ? { code: j.errorCode, message: j.errorMessage } : null,
  createdAt: j.createdAt,
  startedAt: j.startedAt,
  endedAt: j.endedAt,
});

/**
 * A node as operators see it over REST (`GET /api/nodes`, `GET /api/nodes/:id`). totalComputeHours and
 * uptimePercentage are NodeInfo's total_compute_hours and uptime_percentage, by the same function
 * (domain/node-stats.ts), with liveness judged as discovery judges it.
 */
export function nodeJson(node: NodeRow, activeJobs: number, offlineAfterMs: number, now = new Date()) {
  const online = node.status === 'online' && node.lastHeartbeat.getTime() > now.getTime() - offlineAfterMs;
  const stats = nodeStats(node, { now, online });
  return {
    id: node.id,
    name: node.name,
    endpoint: hostPort(node.ipAddress, node.port),
    region: node.region,
    wallet: node.walletAddress,
    devices: node.devices,
    cpuCores: node.cpuCores,
    ramTotal: node.ramTotal,
    computeScore: node.computeScore,
    pricePerHour: node.pricePerHour,
    reputation: node.reputation,
    health: nodeHealth(node.lastHeartbeat, now, offlineAfterMs),
    status: node.status,
    online,
    bannedUntil: node.bannedUntil,
    capacity: node.capacity,
    activeJobs,
    totalJobsCompleted: node.totalJobsCompleted,
    totalJobsFailed: node.totalJobsFailed,
    totalComputeHours: stats.totalComputeHours,
    computeSeconds: Math.floor(node.computeMs / 1000),
    uptimePercentage: stats.uptimePercentage,
    uptimeSince: node.uptimeSince,
    lastHeartbeat: node.lastHeartbeat,
    registeredAt: node.registeredAt,
  };
}

/** bigint → decimal string in every JSON reply. */
const replacer = (_k: string, v: unknown) => (typeof v === 'bigint' ? v.toString() : v);

function intParam(value: unknown, name: string, def: number, max: number): number {
  if (value === undefined || value === '') return def;
  if (typeof value !== 'string' || !/^\d{1,15}$/.test(value)) throw new ValidationError(name, 'must be a non-negative integer');
  return Math.min(Number(value), max);
}

/** An optional query text: one value, at most 128 printable characters. */
function textParam(value: unknown, name: string): string | undefined {
  if (value === undefined || value === '') return undefined;
  if (typeof value !== 'string' || value.length > 128 || /[\u0000-\u001f\u007f]/.test(value)) {
    throw new ValidationError(name, 'must be one value of at most 128 printable characters');
  }
  return value;
}

/** A boolean query flag: true, false or absent. */
function flagParam(value: unknown, name: string): boolean {
  if (value === undefined || value === '' || value === 'false') return false;
  if (value === 'true') return true;
  throw new ValidationError(name, 'must be true or false');
}

/** How long `/api/health` waits for one dependency before reporting it down. */
const HEALTH_CHECK_TIMEOUT_MS = 2000;

/** The operators' REST API: health, stats and read access to jobs. */
export function createRestApp(deps: RestDeps) {
  const app = express();
  app.set('json replacer', replacer);
  app.disable('x-powered-by');

  app.get('/api/health', async (_req, res) => {
    const services: Record<string, { ok: boolean; latencyMs: number; error?: string }> = {};
    await Promise.all(
      deps.checks.map(async (c) => {
        const t0 = performance.now();
        let timer: NodeJS.Timeout | undefined;
        try {
          // A dependency that does not answer is down for a probe: it must not hang the probe itself.
          await Promise.race([
            c.check(),
            new Promise<never>((_, reject) => {
              timer = setTimeout(() => reject(new Error(`no answer within ${HEALTH_CHECK_TIMEOUT_MS} ms`)), HEALTH_CHECK_TIMEOUT_MS);
            }),
          ]).finally(() => clearTimeout(timer));
          services[c.name] = { ok: true, latencyMs: Math.round(performance.now() - t0) };
        } catch (err) {
          // The route answers anyone: the cause (hosts, addresses, a provider's reply) goes to the log only.
          const timedOut = err instanceof Error && err.message.startsWith('no answer within');
          if (!timedOut) deps.log.warn({ err, dependency: c.name }, 'health check failed');
          services[c.name] = { ok: false, latencyMs: Math.round(performance.now() - t0), error: timedOut ? (err as Error).message : 'unreachable or failing (the cause is in the API log)' };
        }
      }),
    );
    const healthy = Object.values(services).every((s) => s.ok);
    res.status(healthy ? 200 : 503).json({
      status: healthy ? 'healthy' : 'degraded',
      version: deps.version,
      uptimeSeconds: Math.round((Date.now() - deps.startedAt.getTime()) / 1000),
      timestamp: new Date().toISOString(),
      services,
    });
  });

  // The operator routes: what every job, node and reservation is, configs included. With an operator token set,
  // only its bearer may read them; the user routes (escrows, wallet links) and the health probe stay as they are.
  const operatorOnly = (req: Request, _res: Response, next: NextFunction) => {
    if (deps.operatorToken === undefined) return next();
    const given = Buffer.from(/^Bearer\s+(.+)$/i.exec(req.get('authorization') ?? '')?.[1]?.trim() ?? '');
    const wanted = Buffer.from(deps.operatorToken);
    if (given.length === wanted.length && timingSafeEqual(given, wanted)) return next();
    next(new UnauthenticatedError('authorization: the operator routes ask for the operator token (Bearer REST_OPERATOR_TOKEN)'));
  };
  app.use(['/api/stats', '/api/jobs', '/api/nodes', '/api/reservations'], operatorOnly);

  app.get('/api/stats', async (_req, res) => {
    res.json(await deps.stats());
  });

  app.get('/api/jobs', async (req, res) => {
    // Empty means absent, as for every other parameter.
    const status = req.query.status === '' ? undefined : req.query.status;
    if (status !== undefined && !JOB_PHASES.includes(status as JobPhase)) {
      throw new ValidationError('status', `must be one of ${JOB_PHASES.join(', ')}`);
    }
    const limit = intParam(req.query.limit, 'limit', 50, 500);
    const offset = intParam(req.query.offset, 'offset', 0, LIST_DEPTH);
    const { rows, total } = await deps.jobs.list({
      submitter: textParam(req.query.submitter, 'submitter'),
      phases: status ? [status as JobPhase] : undefined,
      limit,
      offset,
    });
    res.json({ jobs: rows.map(jobJson), total, limit, offset });
  });

  app.get('/api/jobs/:id', async (req, res) => {
    const job = await deps.jobs.get(requireId(req.params.id, 'id'));
    const waiting = job.status === 'pending' || job.status === 'queued';
    const [events, payments, ahead] = await Promise.all([
      deps.jobs.events(job.id),
      deps.jobs.payments(job.id),
      waiting ? deps.jobs.queuePosition(job.id) : Promise.resolve(null),
    ]);
    res.json({ ...jobJson(job), queuePosition: ahead, match: latestMatch(events), config: job.config, events, payments });
  });

  app.get('/api/jobs/:id/payments', async (req, res) => {
    const id = requireId(req.params.id, 'id');
    // Also for an id no job holds: the reclaims of transfers into its escrow account (a submission refused or
    // never made) are there.
    const [job, payments] = await Promise.all([deps.jobs.get(id).catch((err: unknown) => (err instanceof NotFoundError ? undefined : Promise.reject(err))), deps.jobs.payments(id)]);
    if (!job && payments.length === 0) throw new NotFoundError('job', id);
    res.json({ jobId: id, payments });
  });

  app.get('/api/nodes', async (req, res) => {
    const limit = intParam(req.query.limit, 'limit', 50, 500);
    const offset = intParam(req.query.offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
    const { rows, total } = await deps.nodes.list({ limit, offset });
    res.json({ nodes: rows, total, limit, offset });
  });

  app.get('/api/nodes/:id', async (req, res) => {
    res.json(await deps.nodes.get(requireId(req.params.id, 'id')));
  });

  app.get('/api/reservations', async (req, res) => {
    const pageSize = intParam(req.query.limit, 'limit', 50, 500);
    const wallet = textParam(req.query.wallet, 'wallet');
    const activeOnly = flagParam(req.query.active, 'active');
    const pageToken = textParam(req.query.pageToken, 'pageToken') ?? '';
    // The service speaks the protocol (page_size 0 means its default; page_token): REST keeps its own meaning and
    // names, limit=0 being a count only, as for jobs and nodes.
    try {
      const page = await deps.reservations.list({ wallet, activeOnly, pageSize: Math.max(pageSize, 1), pageToken });
      res.json(pageSize === 0 ? { rows: [], total: page.total, nextPageToken: pageToken } : page);
    } catch (err) {
      if (err instanceof ValidationError && err.field === 'page_token') throw new ValidationError('pageToken', err.message.replace(/^page_token:?\s*/, ''));
      throw err;
    }
  });

  app.get('/api/reservations/:id', async (req, res) => {
    res.json(await deps.reservations.get(requireId(req.params.id, 'id')));
  });

  /**
   * Opens the escrow account of a job id before the job is submitted, for a payer who pays it directly and
   * then submits with config.escrow_tx_hash. Idempotent.
   */
  app.post('/api/escrows/:jobId', async (req, res) => {
    // Without auth, callers are told apart by address (an IPv6 one by its /64: each of its addresses would be a
    // caller of its own otherwise).
    const caller = deps.escrows.caller(req.get('authorization')) ?? `address ${addressKey(req.ip ?? req.socket.remoteAddress ?? '?')}`;
    res.json(await deps.escrows.open(requireId(req.params.jobId, 'jobId'), caller));
  });

  /**
   * Gives a payer back the tokens one of their transfers (`escrowTxHash`, from `paymentAddress`) put into this
   * job's escrow account when no job holds them — the submission was refused, never made, or paid twice.
   * Idempotent; 409 while the transfer funds a job or the job is still running.
   */
  app.post('/api/escrows/:jobId/reclaim', express.json({ limit: '4kb' }), async (req, res) => {
    const caller = deps.escrows.caller(req.get('authorization')) ?? `address ${addressKey(req.ip ?? req.socket.remoteAddress ?? '?')}`;
    const jobId = requireId(req.params.jobId, 'jobId');
    const body = (req.body ?? {}) as { escrowTxHash?: unknown; paymentAddress?: unknown };
    const escrowTxHash = typeof body.escrowTxHash === 'string' ? body.escrowTxHash.trim() : '';
    if (!isSignature(escrowTxHash)) throw new ValidationError('escrowTxHash', 'must be the base58 signature of your transfer (64 bytes)');
    const paymentAddress = typeof body.paymentAddress === 'string' ? body.paymentAddress.trim() : '';
    if (!paymentAddress) throw new ValidationError('paymentAddress', 'is required (the wallet that paid)');
    res.json({ jobId, refund: await deps.escrows.reclaim(jobId, { escrowTxHash, paymentAddress }, caller, req.get('authorization')) });
  });

  /** The signed-in user's linked wallets; with `?wallet=`, also the message that wallet's key signs to link it. */
  app.get('/api/wallet-links', async (req, res) => {
    const { user } = deps.walletLinks.user(req.get('authorization'));
    const wallet = textParam(req.query.wallet, 'wallet');
    const wallets = (await deps.walletLinks.list(user)).map((l) => ({ wallet: l.wallet, linkedAt: l.linkedAt.toISOString() }));
    res.json({ user, wallets, ...(wallet && deps.walletLinks.message(user, wallet)) });
  });

  /**
   * Links a wallet to the signed-in user, given the wallet key's Ed25519 signature (base58 or base64) of the
   * message GET /api/wallet-links?wallet= gives, with that message's `expiresAt`, before it: the user may then
   * pay from it (ReserveNode, SubmitJob with escrow_tx_hash, reclaims). Idempotent.
   */
  app.post('/api/wallet-links', express.json({ limit: '4kb' }), async (req, res) => {
    const { user, claim } = deps.walletLinks.user(req.get('authorization'));
    const body = (req.body ?? {}) as { wallet?: unknown; signature?: unknown; expiresAt?: unknown };
    const text = (v: unknown) => (typeof v === 'string' ? v.trim() : '');
    const wallet = text(body.wallet);
    if (!wallet) throw new ValidationError('wallet', 'is required (the wallet to link)');
    const signature = text(body.signature);
    if (!signature) throw new ValidationError('signature', 'is required: the wallet key\'s signature of the message GET /api/wallet-links?wallet= gives');
    const expiresAt = text(body.expiresAt);
    if (!expiresAt) throw new ValidationError('expiresAt', 'is required: the expiry GET /api/wallet-links?wallet= gives with the message');
    await deps.walletLinks.link(user, claim, wallet, signature, expiresAt);
    res.status(201).json({ user, wallet });
  });

  app.delete('/api/wallet-links/:wallet', async (req, res) => {
    const { user, claim } = deps.walletLinks.user(req.get('authorization'));
    const wallet = requireId(req.params.wallet, 'wallet');
    if (!(await deps.walletLinks.unlink(user, claim, wallet))) throw new NotFoundError('wallet link', wallet);
    res.json({ user, wallet, unlinked: true });
  });

  app.use((_req, res) => {
    res.status(404).json({ error: { code: 404, message: 'no such route' } });
  });

  // The one error middleware: domain errors → HTTP.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    // The body parser's and the router's own refusals (bad JSON, a body too large, a malformed path): their status.
    const status = (err as { status?: unknown; statusCode?: unknown } | null)?.status ?? (err as { statusCode?: unknown } | null)?.statusCode;
    if (!(err instanceof DomainError) && typeof status === 'number' && status >= 400 && status < 500) {
      const type = (err as { type?: string }).type;
      const message = type === 'entity.parse.failed' ? 'body: is not valid JSON' : String((err as Error).message);
      // The body parser's refusals carry a type; the router's (a path it cannot decode) do not.
      res.status(status).json({ error: { code: status, message, ...(status === 400 && { field: type ? 'body' : 'path' }) } });
      return;
    }
    if (err instanceof DomainError) {
      if (err.code === 429) res.set('Retry-After', '60');
      res.status(err instanceof UnavailableError ? 503 : err.code).json({
        error: { code: err.code, message: err.message, ...(err instanceof ValidationError && { field: err.field }) },
      });
      return;
    }
    deps.log.error({ err: summarize(err) }, 'REST request failed');
    res.status(500).json({ error: { code: 500, message: 'internal server error' } });
  });

  return app;
}

/**
 * The match behind the job's current placement or wait: the ranked candidates with their score parts, and why
 * the others were passed over (for a waiting job, its first look; the workflow's memo has each later one, and the
 * job's own `queuePosition` is the live one, so the look's is left out). A job sent back to the queue (its node
 * lost or failing) has none until it is matched again.
 */
export function latestMatch(events: { toStatus: string; data?: unknown }[]): unknown {
  for (let i = events.length - 1; i >= 0; i--) {
    const match = (events[i].data as { match?: Record<string, unknown> } | null | undefined)?.match;
    if (match) {
      const { queuePosition: _atTheLook, ...rest } = match;
      return rest;
    }
    if (events[i].toStatus === 'queued') return null;
  }
  return null;
}
