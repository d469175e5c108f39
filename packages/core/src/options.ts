/** RateLimiter's options, their defaults and their validation; the shapes of its calls' options and answers. */
import { z } from 'zod';
import type { Backend } from './backend.js';
import { InvalidOptionsError } from './errors.js';
import { type PolicyInput, describe, toOptionsError } from './policy.js';

/** What the limiter does when its backend fails or times out. */
export type BackendErrorPolicy = 'fail-open' | 'fail-closed' | 'fallback';

/** RateLimiterOptions configures a {@link RateLimiter}. */
export interface RateLimiterOptions {
  /** Where the buckets live: a MemoryBackend, RedisBackend or HybridBackend. */
  backend: Backend;
  /**
   * The bucket's policy, or a function key → policy (tiers: `(user) => tiers[planOf(user)]`).
   * A function is called on every call; return the same object for the same tier, and its
   * validation is done once.
   * @example { rate: 10, per: '1s', capacity: 100 }
   */
  policy: PolicyInput | ((key: string) => PolicyInput);
  /**
   * The bucket's name inside its key, keeping apart limiters that share a backend and a key
   * (e.g. 'requests' and 'llm-tokens' per user).
   * @default 'default'
   */
  name?: string;
  /**
   * What a call sees when the backend fails (an error, or no answer within its timeout):
   * - 'fail-open': the call is admitted. No outage, no limit while it lasts.
   * - 'fail-closed': the call fails with {@link BackendUnavailableError}. No over-admission;
   *   the agent stops while the backend is down.
   * - 'fallback': the call is decided on a bucket in this process's memory until the backend
   *   answers again. Limits hold per process (N processes may admit up to N× the quota).
   *
   * In a Redis Cluster this is decided per node: only the keys of a failing node see it.
   * @default 'fallback'
   */
  onBackendError?: BackendErrorPolicy;
  /**
   * After a backend failure, calls go straight to `onBackendError` (no timeout each) and one call
   * every `probeIntervalMs` tries the backend again; the first success returns to it.
   * @default 500
   */
  probeIntervalMs?: number;
  /**
   * Called with every backend failure (for logs and metrics). Must not throw. Without it, the
   * limiter's first backend failure prints one process warning (`process.emitWarning`, code
   * 'TOLLGATE_BACKEND_UNAVAILABLE') naming the limiter, the backend and the error.
   */
  onError?: (error: unknown) => void;
}

/** DEFAULT_LIMITER_OPTIONS holds the defaults of {@link RateLimiterOptions}. */
export const DEFAULT_LIMITER_OPTIONS = {
  name: 'default',
  onBackendError: 'fallback',
  probeIntervalMs: 500,
} as const satisfies Partial<RateLimiterOptions>;

/** Options of one {@link RateLimiter.tryAcquire} call. */
export interface TryAcquireOptions {
  /** Tokens this call takes: a finite number > 0, at most the capacity. @default 1 */
  cost?: number;
}

/** Options of one {@link RateLimiter.acquire} call. */
export interface AcquireOptions {
  /** Tokens this call takes: a finite number > 0, at most the capacity. @default 1 */
  cost?: number;
  /** Cancels the wait: the call rejects with {@link AbortedError} and its tokens go back. */
  signal?: AbortSignal;
  /**
   * The longest this call may wait, in ms. A call that would wait longer fails at once with
   * {@link MaxWaitExceededError} (carrying `retryAfterMs`) and takes no token. @default Infinity
   */
  maxWaitMs?: number;
}

/** Grant is what `acquire` resolves with once the caller may proceed. */
export interface Grant {
  /** Ms this call waited (queue and bucket together). */
  waitedMs: number;
  /** Whole tokens left in the bucket when the call was admitted. */
  remaining: number;
}

/** The options every limiter takes for its backend's failures (RateLimiter and SharedLimiter). */
export const FAILURE_OPTIONS = {
  onBackendError: z
    .enum(['fail-open', 'fail-closed', 'fallback'], {
      error: (i) => `must be 'fail-open', 'fail-closed' or 'fallback' (received ${describe(i.input)})`,
    })
    .optional(),
  probeIntervalMs: z
    .number({ error: (i) => `must be a number of ms (received ${describe(i.input)})` })
    .refine((v) => Number.isFinite(v) && v > 0, {
      error: (i) => `must be a finite number of ms > 0 (received ${describe(i.input)})`,
    })
    .optional(),
  onError: z
    .custom<(e: unknown) => void>((v) => typeof v === 'function', {
      error: (i) => `must be a function (received ${describe(i.input)})`,
    })
    .optional(),
};

const optionsSchema = z
  .object({
    backend: z.custom<Backend>(
      (v) =>
        typeof v === 'object' &&
        v !== null &&
        typeof (v as Backend).tryTake === 'function' &&
        typeof (v as Backend).reserve === 'function' &&
        typeof (v as Backend).refund === 'function',
      { error: (i) => `must be a MemoryBackend, RedisBackend or HybridBackend (received ${describe(i.input)})` },
    ),
    policy: z.unknown(),
    name: z.string({ error: (i) => `must be a string (received ${describe(i.input)})` }).optional(),
    ...FAILURE_OPTIONS,
  })
  .strict();

/** RateLimiterOptions once validated, defaults filled in (the policy is validated by the limiter). */
export interface ParsedLimiterOptions {
  backend: Backend;
  policy: unknown;
  name: string;
  onBackendError: BackendErrorPolicy;
  probeIntervalMs: number;
  onError: ((error: unknown) => void) | undefined;
}

/** parseLimiterOptions validates RateLimiter's options; throws {@link InvalidOptionsError}. */
export function parseLimiterOptions(options: unknown): ParsedLimiterOptions {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError(
      `invalid RateLimiter options: must be an object with backend and policy (received ${describe(options)})`,
    );
  }
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) throw toOptionsError('RateLimiter options', parsed.error, '', Object.keys(optionsSchema.shape));
  const o = parsed.data;
  return {
    backend: o.backend,
    policy: o.policy,
    name: o.name ?? DEFAULT_LIMITER_OPTIONS.name,
    onBackendError: o.onBackendError ?? DEFAULT_LIMITER_OPTIONS.onBackendError,
    probeIntervalMs: o.probeIntervalMs ?? DEFAULT_LIMITER_OPTIONS.probeIntervalMs,
    onError: o.onError,
  };
}
