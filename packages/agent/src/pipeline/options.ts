import type { RateLimiter, SharedLimiter } from '@tollgate/core';
import { describe, toOptionsError, z } from '@tollgate/core/internal';
import { DEFAULT_PER_USER, type PerUserOptions } from '../per-user-queue.js';

/**
 * ThrottleOptions configures a throttled LLM client (`throttleOpenAI`). Every field is optional;
 * unknown fields are refused.
 */
export interface ThrottleOptions {
  /**
   * Requests per user: every HTTP attempt (SDK retries and helper requests included) takes one
   * token from the current user's bucket. An attempt that reached the provider keeps its token,
   * even when answered 429 (the provider counted it).
   * @example new RateLimiter({ backend, policy: { rate: 60, per: '1m' }, name: 'requests' })
   */
  requests?: RateLimiter;
  /**
   * LLM tokens per user, for the requests that spend them (chat completions, responses,
   * embeddings, completions): an estimate is taken before each attempt (`estimateLLMTokens`,
   * capped at the bucket's capacity) and settled to the response's `usage`: the difference goes
   * back, or an excess is charged (it waits in the user's queue, so the user's next calls repay
   * it). A failed attempt (no response, or a non-2xx status) gives its estimate back. A JSON
   * response is settled when the client parses its body, before the call's promise resolves; a
   * body never read (an `.asResponse()` left unread) keeps its estimate, and so does a stream
   * that ends without reporting usage.
   * @example new RateLimiter({ backend, policy: { rate: 40_000, per: '1m' }, name: 'llm-tokens' })
   */
  llmTokens?: RateLimiter;
  /**
   * Finds the user of a request from its body, when no `withUser` is around the call. After it,
   * the body's own user fields are tried (`user` and `safety_identifier` for OpenAI); with none
   * of these the call counts against the shared `ANONYMOUS_USER` key.
   */
  user?: (body: unknown) => string | undefined;
  /**
   * Per user, bounds the HTTP attempts in flight (from admission until the response arrives, or,
   * for a stream, until it is finished or left) and those waiting for a slot: a p-queue per
   * user, freed when idle. A call beyond `maxQueued` rejects at once with `QueueFullError`; an
   * SDK retry of an admitted call queues again but is never rejected as full. Without `perUser`,
   * there is no per-user queue (the limiters alone decide).
   * @example { concurrency: 4, maxQueued: 100 }
   */
  perUser?: PerUserOptions;
  /**
   * The longest one attempt may wait for its tokens, in ms. An attempt that would wait longer
   * fails at once with `MaxWaitExceededError` from @tollgate/core (not retried by the client).
   * The wait for a per-user slot is bounded by `perUser.maxQueued` instead.
   * @default Infinity
   */
  maxWaitMs?: number;
  /**
   * The provider's limits, shared fairly by every user (`SharedLimiter`s from @tollgate/core):
   * the pool is the request's `model` (a request without one draws on no pool), the key is the
   * current user, or `shareKey(user)`. An attempt waits for its user's own buckets first, then
   * for its fair share of the pool: one request from `requests`, and from `llmTokens` the same
   * estimate as the user's (capped at the pool's capacity), settled to `usage` in the pool too.
   * What an attempt took goes back in the same cases as the user's tokens.
   *
   * Every response's rate-limit headers (2xx and 429 alike) steer the pools through
   * `SharedLimiter.observe`, in every process sharing their backend: a lower `remaining` empties
   * the pool down to it, a lower `limit` replaces the policy's rate, and a 429's `retry-after-ms`
   * / `retry-after` admits nothing for that model until then. The provider's `limit` is read per
   * the pool policy's `per`: give the pools the provider's window (OpenAI and Anthropic count per
   * minute). Missing or nonsense headers (Azure's `-1`) are ignored.
   * @example { requests: new SharedLimiter({ backend, name: 'openai-requests', policy: { rate: 10_000, per: '1m' } }) }
   */
  shared?: SharedPools;
  /**
   * Whose share of the `shared` pools a user draws on, e.g. the user's tenant (the pools' `weight`
   * option weighs these keys).
   * @default (user) => user
   * @example (user) => tenantOf(user)
   */
  shareKey?: (user: string) => string;
  /** Replaces the provider's default estimate (`estimateLLMTokens` for OpenAI) of a request's LLM tokens. */
  estimateLLMTokens?: (path: string, body: unknown) => number;
  /** Called each time an attempt is admitted, after its wait (for logs, metrics and demos). Must not throw. */
  onAdmit?: (event: AdmitEvent) => void;
  /** Called with errors of background work (refunds and charges after a call). Must not throw. */
  onError?: (error: unknown) => void;
}

/** SharedPools names the shared limiters of {@link ThrottleOptions.shared}; each is optional. */
export interface SharedPools {
  /** The provider's requests per model: one per HTTP attempt. */
  requests?: SharedLimiter;
  /** The provider's LLM tokens per model: the attempt's estimate, settled to `usage`. */
  llmTokens?: SharedLimiter;
}

/** AdmitEvent describes one admitted HTTP attempt. */
export interface AdmitEvent {
  /** The user the attempt counted against. */
  user: string;
  /** The request path, e.g. `/chat/completions`. */
  path: string;
  /** Ms the attempt waited for its queue slot and tokens. */
  waitedMs: number;
  /** LLM tokens reserved for it (0 without `llmTokens`, or for requests that spend none). */
  llmTokens: number;
  /** True for the SDK's retries of an earlier attempt. */
  retry: boolean;
}

/** ThrottleConfig is a validated {@link ThrottleOptions}, defaults filled in. */
export interface ThrottleConfig {
  readonly requests: RateLimiter | undefined;
  readonly llmTokens: RateLimiter | undefined;
  readonly user: ((body: unknown) => string | undefined) | undefined;
  readonly perUser: Required<PerUserOptions> | undefined;
  readonly maxWaitMs: number;
  readonly sharedRequests: SharedLimiter | undefined;
  readonly sharedLLMTokens: SharedLimiter | undefined;
  /** Whose share a user draws on; undefined: the user's own. */
  readonly shareKey: ((user: string) => string) | undefined;
  readonly estimateLLMTokens: ((path: string, body: unknown) => number) | undefined;
  readonly onAdmit: ((event: AdmitEvent) => void) | undefined;
  readonly onError: ((error: unknown) => void) | undefined;
}

const received = (i: { input: unknown }) => `(received ${describe(i.input)})`;

// Duck-typed, not instanceof: a limiter of another copy of @tollgate/core (two versions in one
// install) works the same.
const limiter = z.custom<RateLimiter>(
  (v) => typeof v === 'object' && v !== null && typeof (v as { acquire?: unknown }).acquire === 'function',
  { error: (i) => `must be a RateLimiter ${received(i)}` },
);

// Duck-typed like `limiter`: what the pipeline calls on a SharedLimiter.
const sharedLimiter = z.custom<SharedLimiter>(
  (v) =>
    typeof v === 'object' &&
    v !== null &&
    ['acquire', 'refund', 'observe', 'policyFor'].every((m) => typeof (v as Record<string, unknown>)[m] === 'function'),
  { error: (i) => `must be a SharedLimiter ${received(i)}` },
);

const fn = z.custom<(...args: never[]) => unknown>((v) => typeof v === 'function', {
  error: (i) => `must be a function ${received(i)}`,
});

/** An integer >= min, or Infinity. */
const count = (min: number) =>
  z
    .number({ error: (i) => `must be an integer >= ${min} or Infinity ${received(i)}` })
    .refine((v) => v >= min && (Number.isInteger(v) || v === Number.POSITIVE_INFINITY), {
      error: (i) => `must be an integer >= ${min} or Infinity ${received(i)}`,
    });

const schema = z.strictObject(
  {
    requests: limiter.optional(),
    llmTokens: limiter.optional(),
    user: fn.optional(),
    perUser: z
      .strictObject(
        { concurrency: count(1).optional(), maxQueued: count(0).optional() },
        { error: (i) => `must be an object like { concurrency: 4, maxQueued: 100 } ${received(i)}` },
      )
      .optional(),
    maxWaitMs: z
      .number({ error: (i) => `must be a number of ms >= 0 ${received(i)}` })
      .refine((v) => v >= 0, { error: (i) => `must be a number of ms >= 0 ${received(i)}` })
      .optional(),
    shared: z
      .strictObject(
        { requests: sharedLimiter.optional(), llmTokens: sharedLimiter.optional() },
        { error: (i) => `must be an object like { requests, llmTokens } of SharedLimiters ${received(i)}` },
      )
      .optional(),
    shareKey: fn.optional(),
    estimateLLMTokens: fn.optional(),
    onAdmit: fn.optional(),
    onError: fn.optional(),
  },
  { error: (i) => `must be an object ${received(i)}` },
);

/**
 * parseThrottleOptions validates `input` for `what` (the function's name, for messages).
 * Throws `InvalidOptionsError` naming the option, the constraint and the value received.
 */
export function parseThrottleOptions(what: string, input: unknown): ThrottleConfig {
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw toOptionsError(`${what} options`, parsed.error, '', Object.keys(schema.shape));
  const o = parsed.data as ThrottleOptions;
  return {
    requests: o.requests,
    llmTokens: o.llmTokens,
    user: o.user,
    perUser:
      o.perUser === undefined
        ? undefined
        : {
            concurrency: o.perUser.concurrency ?? DEFAULT_PER_USER.concurrency,
            maxQueued: o.perUser.maxQueued ?? DEFAULT_PER_USER.maxQueued,
          },
    maxWaitMs: o.maxWaitMs ?? Number.POSITIVE_INFINITY,
    sharedRequests: o.shared?.requests,
    sharedLLMTokens: o.shared?.llmTokens,
    shareKey: o.shareKey,
    estimateLLMTokens: o.estimateLLMTokens,
    onAdmit: o.onAdmit,
    onError: o.onError,
  };
}
