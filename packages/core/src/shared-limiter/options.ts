/** SharedLimiter's options, their defaults and their validation; the shapes of its calls' options. */
import { z } from 'zod';
import type { Backend } from '../backend.js';
import { HybridBackend } from '../backends/hybrid.js';
import { MemoryBackend } from '../backends/memory.js';
import { RedisBackend } from '../backends/redis/backend.js';
import { InvalidOptionsError } from '../errors.js';
import { FAILURE_OPTIONS } from '../options.js';
import { type PolicyInput, describe, toOptionsError } from '../policy.js';

/** What a SharedLimiter does when its backend fails or times out (as RateLimiter's). */
export type SharedBackendErrorPolicy = 'fail-open' | 'fail-closed' | 'fallback';

/** SharedLimiterOptions configures a {@link SharedLimiter}. */
export interface SharedLimiterOptions {
  /** Where the pools live: a MemoryBackend (this process), or a RedisBackend / HybridBackend (Redis). */
  backend: Backend;
  /**
   * The pools' name, keeping apart limiters that share a backend (e.g. 'openai-requests' and
   * 'openai-llm-tokens').
   * @default 'shared'
   */
  name?: string;
  /**
   * Each pool's policy, or a function pool → policy (e.g. per model). A function returning
   * undefined means that pool has no limit: its calls are admitted at once.
   * @example (model) => ({ 'gpt-4o': { rate: 10_000, per: '1m' } })[model]
   */
  policy: PolicyInput | ((pool: string) => PolicyInput | undefined);
  /**
   * A key's weight: when keys contend, each gets the pool's refill in proportion to it. A finite
   * number > 0 (at most 1e6); anything else fails the call with InvalidOptionsError.
   * @default () => 1
   */
  weight?: (key: string) => number;
  /**
   * As RateLimiter's: 'fail-open', 'fail-closed' or 'fallback' (a pool in this process). In a
   * Redis Cluster this is decided per node: only the pools of a failing node see it.
   * @default 'fallback'
   */
  onBackendError?: SharedBackendErrorPolicy;
  /** After a backend failure, one call every `probeIntervalMs` tries the backend again. @default 500 */
  probeIntervalMs?: number;
  /**
   * Called with every backend failure (for logs and metrics). Must not throw. Without it, the
   * limiter's first backend failure prints one process warning (`process.emitWarning`, code
   * 'TOLLGATE_BACKEND_UNAVAILABLE') naming the limiter, the backend and the error.
   */
  onError?: (error: unknown) => void;
}

/** DEFAULT_SHARED_OPTIONS holds the defaults of {@link SharedLimiterOptions}. */
export const DEFAULT_SHARED_OPTIONS = {
  name: 'shared',
  pool: 'default',
  onBackendError: 'fallback',
  probeIntervalMs: 500,
} as const;

/** Options of one {@link SharedLimiter.acquire} call. */
export interface SharedAcquireOptions {
  /** Tokens this call takes: a finite number > 0, at most the pool's capacity. @default 1 */
  cost?: number;
  /** The pool drawn on (e.g. the model). @default 'default' */
  pool?: string;
  /** Cancels the wait: the call rejects with AbortedError and its tokens go back. */
  signal?: AbortSignal;
  /** The longest this call may wait, in ms; longer fails at once with MaxWaitExceededError. @default Infinity */
  maxWaitMs?: number;
}

/** Options of one {@link SharedLimiter.tryAcquire} call. */
export interface SharedTryAcquireOptions {
  cost?: number;
  pool?: string;
}

/** Options of one {@link SharedLimiter.refund} call. */
export interface SharedRefundOptions {
  pool?: string;
}

/**
 * PoolObservation is what the provider said about a pool, each field optional: its `limit`
 * (tokens per the policy's `per`), the tokens `remaining`, ms until its window resets
 * (`resetAfterMs`), and ms before it takes another call (`retryAfterMs`). Missing, negative or
 * NaN fields are ignored.
 */
export interface PoolObservation {
  limit?: number;
  remaining?: number;
  resetAfterMs?: number;
  retryAfterMs?: number;
}

const optionsSchema = z
  .object({
    backend: z.custom<Backend>(
      (v) => v instanceof MemoryBackend || v instanceof RedisBackend || v instanceof HybridBackend,
      { error: (i) => `must be a MemoryBackend, RedisBackend or HybridBackend (received ${describe(i.input)})` },
    ),
    policy: z.unknown(),
    name: z.string({ error: (i) => `must be a string (received ${describe(i.input)})` }).optional(),
    weight: z
      .custom<(k: string) => number>((v) => typeof v === 'function', {
        error: (i) => `must be a function key → number (received ${describe(i.input)})`,
      })
      .optional(),
    ...FAILURE_OPTIONS,
  })
  .strict();

/** SharedLimiterOptions once validated, defaults filled in (the policy is validated by the limiter). */
export interface ParsedSharedOptions {
  backend: Backend;
  policy: unknown;
  name: string;
  weight: ((key: string) => number) | undefined;
  onBackendError: SharedBackendErrorPolicy;
  probeIntervalMs: number;
  onError: ((error: unknown) => void) | undefined;
}

/** parseSharedOptions validates SharedLimiter's options; throws {@link InvalidOptionsError}. */
export function parseSharedOptions(options: unknown): ParsedSharedOptions {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError(
      `invalid SharedLimiter options: must be an object with backend and policy (received ${describe(options)})`,
    );
  }
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success)
    throw toOptionsError('SharedLimiter options', parsed.error, '', Object.keys(optionsSchema.shape));
  const o = parsed.data;
  return {
    backend: o.backend,
    policy: o.policy,
    name: o.name ?? DEFAULT_SHARED_OPTIONS.name,
    weight: o.weight,
    onBackendError: o.onBackendError ?? DEFAULT_SHARED_OPTIONS.onBackendError,
    probeIntervalMs: o.probeIntervalMs ?? DEFAULT_SHARED_OPTIONS.probeIntervalMs,
    onError: o.onError,
  };
}
