import type { Decision, Reservation } from './bucket.js';
import type { Policy } from './policy.js';

/** A value now, or a promise of it: the memory backend answers synchronously. */
export type MaybePromise<T> = T | Promise<T>;

/**
 * Backend is a storage strategy: it does one atomic operation on one bucket — refill by the
 * elapsed time, then decide. `name` keeps apart the buckets of different limiters (e.g.
 * 'requests' and 'llm-tokens') that share a key; `key` is any string.
 *
 * Implementations: {@link MemoryBackend}, {@link RedisBackend}, {@link HybridBackend}. A new
 * backend is done when the shared contract suite (test/contract) passes on it.
 */
export interface Backend {
  /** A short label for messages and benchmarks: 'memory', 'redis', 'hybrid'. */
  readonly kind: string;
  /** Take `cost` now if the bucket holds it; otherwise change nothing and say when it would. */
  tryTake(name: string, key: string, policy: Policy, cost: number): MaybePromise<Decision>;
  /**
   * Take `cost` now, into debt if need be, provided the wait is at most `maxWaitMs`
   * (negative: no limit). Returns how long the caller must wait.
   */
  reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): MaybePromise<Reservation>;
  /** Give `amount` tokens back (capped at capacity). */
  refund(name: string, key: string, policy: Policy, amount: number): MaybePromise<void>;
  /**
   * The shard (e.g. the Redis Cluster node, as 'host:port') that holds the bucket (`name`, `key`),
   * or undefined when the backend is one shard. The limiter keeps a circuit breaker per shard, so
   * a failing shard sends only its own keys to the failure policy. Called on every decision: it
   * must be cheap and must not throw.
   */
  shardOf?(name: string, key: string): string | undefined;
}
