import * as core from '@tollgate/core';
import * as internal from '@tollgate/core/internal';
import { expect, test } from 'vitest';

// The public surface, as outside code sees it. A change here is a change to the contract.
test('@tollgate/core exports the backends, the limiter, the errors and their guards, and the defaults', () => {
  expect(Object.keys(core).sort()).toMatchInlineSnapshot(`
    [
      "AbortedError",
      "BackendTimeoutError",
      "BackendUnavailableError",
      "CostExceedsCapacityError",
      "DEFAULT_HYBRID_HEADROOM",
      "DEFAULT_LIMITER_OPTIONS",
      "DEFAULT_REDIS_OPTIONS",
      "DEFAULT_SHARED_OPTIONS",
      "HybridBackend",
      "InvalidArgumentError",
      "InvalidOptionsError",
      "MaxWaitExceededError",
      "MemoryBackend",
      "RateLimiter",
      "RedisBackend",
      "SharedLimiter",
      "TollgateError",
      "isAbortedError",
      "isBackendTimeoutError",
      "isBackendUnavailableError",
      "isCostExceedsCapacityError",
      "isInvalidArgumentError",
      "isInvalidOptionsError",
      "isMaxWaitExceededError",
      "isTollgateError",
    ]
  `);
});

// Not covered by semver: what @tollgate/agent, the tests and the benchmarks use beyond the API.
test('@tollgate/core/internal exports the bucket math, the script, key encoding and the synchronous entries', () => {
  expect(Object.keys(internal).sort()).toMatchInlineSnapshot(`
    [
      "BATCH_SCRIPT",
      "BATCH_SHA",
      "BUCKET_SCRIPT",
      "BUCKET_SHA",
      "COST_EPSILON",
      "DECISION_BYTES",
      "ENTRY_BYTES",
      "LimiterMetrics",
      "MAX_BATCH",
      "MAX_IN_FLIGHT",
      "MAX_TOKENS",
      "SPEC_BYTES",
      "ScriptAt",
      "ScriptBatcher",
      "acquireNow",
      "deadlineArg",
      "decisionArgs",
      "decodeBucket",
      "decodeReply",
      "describe",
      "encodeKey",
      "giveBack",
      "keySlot",
      "newBucket",
      "normalizePolicy",
      "parseDuration",
      "redisKey",
      "refill",
      "refundNow",
      "reserve",
      "resetAfter",
      "runBatch",
      "runScript",
      "specOf",
      "take",
      "toOptionsError",
      "tokensAt",
      "tryTake",
      "waitFor",
      "z",
    ]
  `);
});
