/**
 * @tollgate/core/internal: what @tollgate/agent, the tests and the benchmarks need beyond the
 * public API. NOT covered by semver: names here may change or vanish in any release. Applications
 * import from `@tollgate/core` only.
 */
import { ACQUIRE_NOW, type AcquireOptions, type Grant, REFUND_NOW, RateLimiter } from './limiter.js';

export { BUCKET_SCRIPT } from './backends/redis-script.js';
export { encodeKey, redisKey } from './backends/redis.js';
export { keySlot } from './backends/redis-batch.js';
export {
  COST_EPSILON,
  giveBack,
  newBucket,
  refill,
  reserve,
  resetAfter,
  tokensAt,
  tryTake,
  waitFor,
} from './bucket.js';
export type { BucketState } from './bucket.js';
export { MAX_TOKENS, describe, normalizePolicy, parseDuration, toOptionsError } from './policy.js';

/**
 * acquireNow is `limiter.acquire(key, options)`, answering with the grant itself (not a promise)
 * when it is granted at once by a synchronous backend. A subclass that overrides `acquire` is
 * honoured: its `acquire` is called.
 */
export function acquireNow(limiter: RateLimiter, key: string, options?: AcquireOptions): Grant | Promise<Grant> {
  // An override (metrics, key namespacing) must see every call.
  if (limiter.acquire !== RateLimiter.prototype.acquire) return limiter.acquire(key, options);
  return limiter[ACQUIRE_NOW](key, options);
}

/**
 * refundNow is `limiter.refund(key, amount)`, done synchronously (undefined) when the backend is.
 * Throws what `refund` rejects with; a returned promise never rejects.
 */
export function refundNow(limiter: RateLimiter, key: string, amount: number): Promise<void> | undefined {
  if (limiter.refund !== RateLimiter.prototype.refund) return limiter.refund(key, amount).catch(() => undefined);
  return limiter[REFUND_NOW](key, amount);
}

// The Redis scripts and batcher, and running the scripts on a fixed clock (tests).
export { BATCH_SCRIPT, BATCH_SHA, BUCKET_SHA, ENTRY_BYTES, decodeBucket } from './backends/redis/scripts.js';
export { MAX_BATCH, MAX_IN_FLIGHT, ScriptBatcher } from './backends/redis/batcher.js';
export type { BatchCall, DecisionSpec } from './backends/redis/batcher.js';
export { ScriptAt, decisionArgs, runBatch, runScript } from './backends/redis/fixed-clock.js';
export type { BatchStep } from './backends/redis/fixed-clock.js';
