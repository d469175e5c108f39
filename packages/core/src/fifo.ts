/**
 * The callers waiting on one key, in arrival order: an array read from `next` on, so taking the
 * first is O(1); the consumed front is dropped once it is most of the array. Shared by
 * RateLimiter's key queue and SharedLimiter's fair queue.
 */
export interface Fifo<T> {
  waiters: T[];
  next: number;
}

/** shift takes the first waiter of `q` (undefined when none is left). */
export function shift<T>(q: Fifo<T>): T | undefined {
  const w = q.waiters[q.next];
  if (w === undefined) return undefined;
  q.waiters[q.next] = undefined as unknown as T;
  q.next++;
  if (q.next > 1024 && q.next * 2 > q.waiters.length) {
    q.waiters.splice(0, q.next);
    q.next = 0;
  }
  return w;
}
