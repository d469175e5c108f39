/**
 * @tollgate/core: token buckets in memory, in Redis, or a hybrid of both, and a RateLimiter
 * whose callers wait their turn instead of being turned away.
 *
 * What tests and benchmarks need beyond this (the bucket math, the Lua script, key encoding) is
 * in `@tollgate/core/internal`, which is not covered by semver.
 */
export type { Backend, MaybePromise } from './backend.js';
export { DEFAULT_HYBRID_HEADROOM, HybridBackend } from './backends/hybrid.js';
export type { HybridBackendOptions } from './backends/hybrid.js';
export { MemoryBackend } from './backends/memory.js';
export type { MemoryBackendOptions } from './backends/memory.js';
export { DEFAULT_REDIS_OPTIONS, RedisBackend } from './backends/redis/backend.js';
export type { RedisBackendOptions } from './backends/redis/backend.js';
export type { Decision, Reservation } from './bucket.js';
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
export { DEFAULT_LIMITER_OPTIONS } from './options.js';
export type {
  AcquireOptions,
  BackendErrorPolicy,
  Grant,
  RateLimiterOptions,
  TryAcquireOptions,
} from './options.js';
export type { Duration, Policy, PolicyInput } from './policy.js';
export { RateLimiter } from './rate-limiter.js';
export { DEFAULT_SHARED_OPTIONS } from './shared-limiter/options.js';
export { SharedLimiter } from './shared-limiter/shared-limiter.js';
export type { SharedGrant } from './shared-limiter/fair-queue.js';
export type {
  PoolObservation,
  SharedAcquireOptions,
  SharedBackendErrorPolicy,
  SharedLimiterOptions,
  SharedRefundOptions,
  SharedTryAcquireOptions,
} from './shared-limiter/options.js';
