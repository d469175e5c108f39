/**
 * @tollgate/core: token buckets in memory, in Redis, or a hybrid of both, and a RateLimiter
 * whose callers wait their turn instead of being turned away.
 */
export type { Backend, MaybePromise } from './backend.js';
export { HybridBackend, DEFAULT_HYBRID_HEADROOM } from './backends/hybrid.js';
export type { HybridBackendOptions } from './backends/hybrid.js';
export { MemoryBackend } from './backends/memory.js';
export type { MemoryBackendOptions } from './backends/memory.js';
export { BUCKET_SCRIPT } from './backends/redis-script.js';
export { DEFAULT_REDIS_OPTIONS, RedisBackend, encodeKey, redisKey } from './backends/redis.js';
export type { RedisBackendOptions } from './backends/redis.js';
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
export type { BucketState, Decision, Reservation } from './bucket.js';
export {
  AbortedError,
  BackendTimeoutError,
  BackendUnavailableError,
  CostExceedsCapacityError,
  InvalidArgumentError,
  InvalidOptionsError,
  MaxWaitExceededError,
  TollgateError,
  isAbortedError,
  isBackendTimeoutError,
  isBackendUnavailableError,
  isCostExceedsCapacityError,
  isInvalidArgumentError,
  isInvalidOptionsError,
  isMaxWaitExceededError,
  isTollgateError,
} from './errors.js';
export type { TollgateErrorCode } from './errors.js';
export { DEFAULT_LIMITER_OPTIONS, RateLimiter } from './limiter.js';
export type {
  AcquireOptions,
  BackendErrorPolicy,
  Grant,
  RateLimiterOptions,
  TryAcquireOptions,
} from './limiter.js';
export { MAX_TOKENS, normalizePolicy, parseDuration } from './policy.js';
export type { Duration, Policy, PolicyInput } from './policy.js';
export { DEFAULT_SHARED_OPTIONS, SharedLimiter } from './shared-limiter/shared-limiter.js';
export type { PoolObservation, SharedAcquireOptions, SharedBackendErrorPolicy, SharedGrant, SharedLimiterOptions } from './shared-limiter/shared-limiter.js';
export type { SharedRefundOptions, SharedTryAcquireOptions } from './shared-limiter/shared-limiter.js';
