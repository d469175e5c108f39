/**
 * @tollgate/core/internal: what @tollgate/agent, the tests and the benchmarks need beyond the
 * public API. NOT covered by semver: names here may change or vanish in any release. Applications
 * import from `@tollgate/core` only.
 */
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
  take,
  tokensAt,
  tryTake,
  waitFor,
} from './bucket.js';
export type { BucketState } from './bucket.js';
export { LimiterMetrics } from './metrics.js';
export type { Outcome } from './metrics.js';
export { MAX_TOKENS, describe, normalizePolicy, parseDuration, toOptionsError } from './policy.js';
export { acquireNow, refundNow } from './rate-limiter.js';
