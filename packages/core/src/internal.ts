/**
 * @tollgate/core/internal: what @tollgate/agent, the tests and the benchmarks need beyond the
 * public API. NOT covered by semver: names here may change or vanish in any release. Applications
 * import from `@tollgate/core` only.
 */
export { encodeKey, keySlot, redisKey } from './backends/redis/keys.js';
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

// The Redis scripts and batcher, and running the scripts on a fixed clock (tests).
export {
  BATCH_SCRIPT,
  BATCH_SHA,
  BUCKET_SCRIPT,
  BUCKET_SHA,
  DECISION_BYTES,
  ENTRY_BYTES,
  SPEC_BYTES,
  decodeBucket,
} from './backends/redis/scripts.js';
export { MAX_BATCH, MAX_IN_FLIGHT, ScriptBatcher, specOf } from './backends/redis/batcher.js';
export type { BatchCall, DecisionSpec, Evaluator } from './backends/redis/batcher.js';
export { ScriptAt, deadlineArg, decisionArgs, decodeReply, runBatch, runScript } from './backends/redis/fixed-clock.js';
export type { BatchStep } from './backends/redis/fixed-clock.js';

// The zod that validates Tollgate's own options: @tollgate/agent uses it too, so its option
// checks never depend on the zod (3 or 4) the app installed.
export { z } from 'zod';
