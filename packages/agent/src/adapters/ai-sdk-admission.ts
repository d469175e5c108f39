/**
 * The AI SDK middleware's attempt pipeline: admit → (the model call) → settle → learn. Kept in
 * this one file, with no AI SDK type in it, so it can move onto the shared provider-neutral
 * pipeline unchanged in behaviour:
 *
 * - {@link admit}: the user's per-user slot, then the user's `requests` and `llmTokens` buckets
 *   (together), then the shared pools (pool = the model id).
 * - {@link Admission.settle}: the call answered; its request tokens stay, its LLM-token estimate
 *   becomes the reported usage (unknown usage keeps the estimate); the slot is freed.
 * - {@link Admission.fail}: the call failed after admission; request tokens stay (it may have
 *   reached the provider, which counts it), the LLM-token estimate goes back.
 * - {@link learn}: the provider's rate-limit headers steer the shared pools.
 */
import type { RateLimiter } from '@tollgate/core';
import { acquireNow, refundNow } from '@tollgate/core/internal';
import type { PerUserQueues, Release } from '../per-user-queue.js';

/**
 * SharedPoolLimiter is what the middleware needs of a `SharedLimiter` (@tollgate/core): one
 * bucket per pool shared fairly by many keys, steered by what the provider says.
 */
export interface SharedPoolLimiter {
  acquire(key: string, options: { cost?: number; pool?: string; signal?: AbortSignal; maxWaitMs?: number }): Promise<unknown>;
  refund(key: string, amount: number, options?: { pool?: string }): Promise<void>;
  observe(
    pool: string,
    said: { limit?: number; remaining?: number; resetAfterMs?: number; retryAfterMs?: number },
  ): Promise<void> | void;
}

/** The limits one middleware applies, resolved from its options. */
export interface Limits {
  readonly requests: RateLimiter | undefined;
  readonly llmTokens: RateLimiter | undefined;
  readonly queues: PerUserQueues | undefined;
  readonly sharedRequests: SharedPoolLimiter | undefined;
  readonly sharedLLMTokens: SharedPoolLimiter | undefined;
  readonly shareKey: (user: string) => string;
  readonly maxWaitMs: number;
  /** Runs work whose failure must reach only `onError`. */
  background(work: Promise<unknown>): void;
}

/** One model call's holdings, from admission until it is settled or fails. */
export class Admission {
  /** LLM tokens reserved from the user's bucket (the estimate, capped at its capacity). */
  readonly llmTokens: number;
  #requestTaken = false;
  #llmTaken = false;
  #sharedRequestTaken = false;
  #sharedLLMTaken = false;
  #release: Release | undefined;
  #done = false;
  readonly #limits: Limits;
  readonly #user: string;
  readonly #pool: string;
  readonly #estimate: number;

  constructor(limits: Limits, user: string, pool: string, estimate: number) {
    this.#limits = limits;
    this.#user = user;
    this.#pool = pool;
    const llm = limits.llmTokens;
    this.#estimate = estimate;
    this.llmTokens = llm === undefined ? 0 : Math.min(estimate, llm.policyFor(user).capacity);
  }

  /** settle: the call answered, using `usage` LLM tokens (undefined: unknown, the estimate stays). */
  settle(usage: number | undefined): void {
    if (this.#done) return;
    this.#done = true;
    const l = this.#limits;
    if (usage !== undefined) {
      if (this.#llmTaken && l.llmTokens !== undefined) settleBucket(l, l.llmTokens, this.#user, this.llmTokens, usage);
      if (this.#sharedLLMTaken && l.sharedLLMTokens !== undefined) {
        settlePool(l, l.sharedLLMTokens, l.shareKey(this.#user), this.#pool, this.#estimate, usage);
      }
    }
    this.#release?.();
  }

  /** fail: the call failed after admission; request tokens stay, LLM tokens go back. */
  fail(): void {
    if (this.#done) return;
    this.#done = true;
    this.#giveBackLLMTokens();
    this.#release?.();
  }

  /** giveBack: the call never went out; everything goes back. */
  giveBack(): void {
    if (this.#done) return;
    this.#done = true;
    const l = this.#limits;
    if (this.#requestTaken && l.requests !== undefined) refund(l, l.requests, this.#user, 1);
    if (this.#sharedRequestTaken && l.sharedRequests !== undefined) {
      l.background(l.sharedRequests.refund(l.shareKey(this.#user), 1, { pool: this.#pool }));
    }
    this.#giveBackLLMTokens();
    this.#release?.();
  }

  #giveBackLLMTokens(): void {
    const l = this.#limits;
    if (this.#llmTaken && l.llmTokens !== undefined) refund(l, l.llmTokens, this.#user, this.llmTokens);
    if (this.#sharedLLMTaken && l.sharedLLMTokens !== undefined) {
      l.background(l.sharedLLMTokens.refund(l.shareKey(this.#user), this.#estimate, { pool: this.#pool }));
    }
    this.#llmTaken = false;
    this.#sharedLLMTaken = false;
  }

  /** Takes the slot and the tokens, in the order described at the top of this file. */
  async take(signal: AbortSignal | undefined): Promise<void> {
    const l = this.#limits;
    const user = this.#user;
    const maxWaitMs = l.maxWaitMs;
    if (l.queues !== undefined) this.#release = await l.queues.enter(user, { signal });
    // The user's two buckets at once: one failing (a deadline) stops the other's wait.
    const stop = new AbortController();
    const both = signal !== undefined ? AbortSignal.any([signal, stop.signal]) : stop.signal;
    const waits: Promise<unknown>[] = [];
    const take = (limiter: RateLimiter, cost: number, taken: () => void) => {
      waits.push(
        Promise.resolve(acquireNow(limiter, user, { cost, signal: both, maxWaitMs })).then(taken, (e: unknown) => {
          stop.abort();
          throw e;
        }),
      );
    };
    if (l.requests !== undefined)
      take(l.requests, 1, () => {
        this.#requestTaken = true;
      });
    if (l.llmTokens !== undefined)
      take(l.llmTokens, this.llmTokens, () => {
        this.#llmTaken = true;
      });
    const settled = await Promise.allSettled(waits);
    const failure = settled.find((s) => s.status === 'rejected');
    if (failure !== undefined) throw failure.reason;
    // Then the user's fair share of the provider's limit (pool = the model).
    const key = l.shareKey(user);
    const pool = this.#pool;
    const opts = (cost: number) => ({ cost, pool, maxWaitMs, ...(signal !== undefined ? { signal } : {}) });
    if (l.sharedRequests !== undefined) {
      await l.sharedRequests.acquire(key, opts(1));
      this.#sharedRequestTaken = true;
    }
    if (l.sharedLLMTokens !== undefined) {
      await l.sharedLLMTokens.acquire(key, opts(this.#estimate));
      this.#sharedLLMTaken = true;
    }
  }
}

/**
 * admit waits for `user`'s slot and tokens for one call of `pool`'s model, estimated at
 * `estimate` LLM tokens. On any failure (a full queue, a deadline, the caller's abort) what was
 * taken goes back at once and the error is thrown.
 */
export async function admit(limits: Limits, user: string, pool: string, estimate: number, signal: AbortSignal | undefined): Promise<Admission> {
  const a = new Admission(limits, user, pool, estimate);
  try {
    await a.take(signal);
  } catch (e) {
    a.giveBack();
    throw e;
  }
  return a;
}

/** What the provider said about its limits, read from one response's headers. */
export interface ProviderWord {
  requests?: { limit?: number; remaining?: number; resetAfterMs?: number };
  llmTokens?: { limit?: number; remaining?: number; resetAfterMs?: number };
  retryAfterMs?: number;
}

/** learn passes the provider's word about `pool` on to the shared pools (errors to onError). */
export function learn(limits: Limits, pool: string, word: ProviderWord): void {
  const observe = (limiter: SharedPoolLimiter | undefined, window: ProviderWord['requests']) => {
    if (limiter === undefined) return;
    const said = { ...window, ...(word.retryAfterMs !== undefined ? { retryAfterMs: word.retryAfterMs } : {}) };
    if (Object.keys(said).length === 0) return;
    try {
      const r = limiter.observe(pool, said);
      if (r !== undefined) limits.background(r);
    } catch (e) {
      limits.background(Promise.reject(e));
    }
  };
  observe(limits.sharedRequests, word.requests);
  observe(limits.sharedLLMTokens, word.llmTokens);
}

function refund(l: Limits, limiter: RateLimiter, user: string, amount: number): void {
  try {
    const pending = refundNow(limiter, user, amount);
    if (pending !== undefined) l.background(pending);
  } catch (e) {
    l.background(Promise.reject(e));
  }
}

/**
 * settleBucket turns a reservation into the actual use: the difference goes back, or the excess
 * is charged in the background (it waits its turn, so the user's next calls pay for it).
 */
function settleBucket(l: Limits, limiter: RateLimiter, user: string, reserved: number, actual: number): void {
  const diff = actual - reserved;
  if (diff < 0) {
    refund(l, limiter, user, -diff);
    return;
  }
  const capacity = limiter.policyFor(user).capacity;
  for (let left = diff; left > 0; left -= capacity) l.background(limiter.acquire(user, { cost: Math.min(left, capacity) }));
}

function settlePool(l: Limits, limiter: SharedPoolLimiter, key: string, pool: string, reserved: number, actual: number): void {
  const diff = actual - reserved;
  if (diff < 0) l.background(limiter.refund(key, -diff, { pool }));
  else if (diff > 0) l.background(limiter.acquire(key, { cost: diff, pool }));
}
