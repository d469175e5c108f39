import * as core from '@tollgate/core';
import { expect, test } from 'vitest';

// The public surface, as outside code sees it. A change here is a change to the contract.
test('@tollgate/core exports', () => {
  expect(Object.keys(core).sort()).toMatchInlineSnapshot(`
    [
      "AbortedError",
      "BUCKET_SCRIPT",
      "BackendTimeoutError",
      "BackendUnavailableError",
      "COST_EPSILON",
      "CostExceedsCapacityError",
      "DEFAULT_HYBRID_HEADROOM",
      "DEFAULT_LIMITER_OPTIONS",
      "DEFAULT_REDIS_OPTIONS",
      "DEFAULT_SHARED_OPTIONS",
      "HybridBackend",
      "InvalidArgumentError",
      "InvalidOptionsError",
      "MAX_TOKENS",
      "MaxWaitExceededError",
      "MemoryBackend",
      "RateLimiter",
      "RedisBackend",
      "SharedLimiter",
      "TollgateError",
      "encodeKey",
      "giveBack",
      "isAbortedError",
      "isBackendTimeoutError",
      "isBackendUnavailableError",
      "isCostExceedsCapacityError",
      "isInvalidArgumentError",
      "isInvalidOptionsError",
      "isMaxWaitExceededError",
      "isTollgateError",
      "newBucket",
      "normalizePolicy",
      "parseDuration",
      "redisKey",
      "refill",
      "reserve",
      "resetAfter",
      "tokensAt",
      "tryTake",
      "waitFor",
    ]
  `);
});
