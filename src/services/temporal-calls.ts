import { WorkflowUpdateStage, type Client } from '@temporalio/client';

/** What `within` resolves to when the promise has not settled in time. */
export const LATE = Symbol('late');

/** Settles as `p` does, or resolves to LATE once `ms` pass first (`p` goes on). */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | typeof LATE> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<typeof LATE>((resolve) => {
    timer = setTimeout(() => resolve(LATE), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** How long one call to Temporal may take by default, retries included. */
export const TEMPORAL_CALL_LIMIT_MS = 20_000;

/**
 * Calls to Temporal that give up: an unreachable frontend, or one that accepts connections and never answers,
 * would hold the caller for minutes, and an update with no worker to accept it for ever (the client asks again
 * until it is accepted). Given up, a call fails with an AbortError or WorkflowUpdateRPCTimeoutOrCancelledError,
 * which `temporalUnavailable` makes a 503 to ask again.
 */
export function temporalCalls(client: Client, limitMs = TEMPORAL_CALL_LIMIT_MS) {
  /** Runs `run`'s Temporal calls for at most `ms` (default `limitMs`) in all. */
  function limited<T>(run: () => Promise<T>, ms = limitMs): Promise<T> {
    return client.connection.withAbortSignal(AbortSignal.timeout(ms), run);
  }

  /**
   * Results being waited for, by update (`<workflow id>/<update id>`): the SDK polls for an accepted update's result
   * until it comes, whoever still waits, so a caller asking again (the same update id) joins the poll on its way
   * rather than starting one more.
   */
  const waiting = new Map<string, Promise<unknown>>();

  /** The result of the update accepted under `key`, polled once however many wait for it. */
  function resultOf<T>(key: string | undefined, accepted: { result(): Promise<T> }): Promise<T> {
    const joined = key === undefined ? undefined : (waiting.get(key) as Promise<T> | undefined);
    if (joined) return joined;
    const result = accepted.result();
    if (key !== undefined) {
      waiting.set(key, result);
      const done = () => waiting.get(key) === result && waiting.delete(key);
      result.then(done, done);
    }
    return result;
  }

  /**
   * An update whose acceptance is limited; once a worker has accepted it, its result (a payment on its way, say)
   * takes what it takes. `key` (`<workflow id>/<update id>`): see resultOf.
   */
  async function acceptedThen<T>(start: (waitForStage: typeof WorkflowUpdateStage.ACCEPTED) => Promise<{ result(): Promise<T> }>, key?: string): Promise<T> {
    const accepted = await limited(() => start(WorkflowUpdateStage.ACCEPTED));
    return resultOf(key, accepted);
  }

  /**
   * An update accepted within `answerMs` (else it fails as a call given up: a 503 to ask again, in time for a
   * caller's deadline), then its result if it comes within `answerMs` of the call's start; else (accepted, still
   * on its way) LATE. `key`: see resultOf.
   */
  async function acceptedWithin<T>(
    start: (waitForStage: typeof WorkflowUpdateStage.ACCEPTED) => Promise<{ result(): Promise<T> }>,
    answerMs: number,
    key?: string,
  ): Promise<T | typeof LATE> {
    const startedAt = Date.now();
    const accepted = await limited(() => start(WorkflowUpdateStage.ACCEPTED), Math.min(limitMs, answerMs));
    const result = resultOf(key, accepted);
    result.catch(() => undefined); // awaited below unless it comes late
    return within(result, Math.max(0, answerMs - (Date.now() - startedAt)));
  }

  return { limited, acceptedThen, acceptedWithin };
}
