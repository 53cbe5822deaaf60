/**
 * Lets at most one call per key through per `everyMs`. Memory stays bounded by the keys passed within the
 * last `everyMs`: entries are kept oldest first and dropped once they can no longer hold anything back.
 */
export function keyedThrottle(everyMs: number) {
  const passed = new Map<string, number>();

  return {
    /**
     * Whether a call for `key` may pass at `now`; if it may, it counts as passed from then on.
     * @param since a moment that counts as an earlier pass (ignored when it is after `now`)
     */
    pass(key: string, now: number, since?: number): boolean {
      const before = since !== undefined && since <= now ? since : -Infinity;
      if (now - Math.max(passed.get(key) ?? -Infinity, before) < everyMs) return false;
      passed.delete(key);
      passed.set(key, now);
      for (const [k, at] of passed) {
        if (now - at < everyMs) break;
        passed.delete(k);
      }
      return true;
    },
    /** Takes back the pass of `key` at `at` (the call it let through did not happen), so the next one passes. */
    undo(key: string, at: number): void {
      if (passed.get(key) === at) passed.delete(key);
    },
  };
}

/**
 * Lets at most `limit` calls per key through in each `windowMs` (a window starts with a key's first call after
 * the last one ended). Memory stays bounded by the keys seen within the last `windowMs`.
 */
export function keyedQuota(limit: number, windowMs: number) {
  const windows = new Map<string, { start: number; used: number }>();

  return {
    /** Whether a call for `key` may pass at `now`; if it may, it counts. */
    pass(key: string, now: number): boolean {
      const current = windows.get(key);
      if (current && now - current.start < windowMs) {
        if (current.used >= limit) return false;
        current.used += 1;
        return true;
      }
      // A new window goes to the back: the map stays ordered by window start, oldest first.
      windows.delete(key);
      windows.set(key, { start: now, used: 1 });
      for (const [k, w] of windows) {
        if (now - w.start < windowMs) break;
        windows.delete(k);
      }
      return true;
    },
  };
}
