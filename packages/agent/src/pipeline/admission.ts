/**
 * Admission: taking an attempt's tokens from the user's `requests` and `llmTokens` buckets, then
 * from its share of the `shared` pools, and giving them back when the attempt never reaches the
 * provider.
 */
import type { Grant, RateLimiter, SharedLimiter } from '@tollgate/core';
import { acquireNow } from '@tollgate/core/internal';
import type { Release } from '../per-user-queue.js';
import type { Call, Pipeline } from './pipeline.js';

/** Holdings is what one attempt has taken so far. */
export interface Holdings {
  /** Its per-user queue slot. */
  release: Release | undefined;
  /** True once its request token is taken. */
  requestTaken: boolean;
  /** LLM tokens reserved for it and not yet settled. */
  llmReserved: number;
  /** True once its request is taken from the shared `requests` pool. */
  sharedRequestTaken: boolean;
  /** LLM tokens reserved for it in the shared `llmTokens` pool and not yet settled. */
  sharedLLMReserved: number;
}

/**
 * takeTokens takes `call`'s tokens into `h`: the user's own first, then (for a call with a pool)
 * its share of the shared pools. Undefined when every bucket granted at once (as MemoryBackend
 * does when the tokens are there, and no pool is drawn on), else a promise settled when all are,
 * rejected with the first failure (what was taken stays recorded in `h`, for {@link giveBack}).
 * `maxWaitMs` bounds the two waits together.
 */
export function takeTokens(
  p: Pipeline,
  call: Call,
  h: Holdings,
  signal: AbortSignal | undefined,
): Promise<void> | undefined {
  if (call.pool === undefined) return takeOwn(p, call, h, signal);
  const start = performance.now();
  const own = takeOwn(p, call, h, signal);
  if (own === undefined) return takeShares(p, call, h, signal, p.maxWaitMs);
  return own.then(() => takeShares(p, call, h, signal, p.maxWaitMs - (performance.now() - start)));
}

/** takeOwn takes the user's own tokens (see {@link takeTokens}). */
function takeOwn(p: Pipeline, call: Call, h: Holdings, signal: AbortSignal | undefined): Promise<void> | undefined {
  const user = call.user;
  const maxWaitMs = p.maxWaitMs;
  const requests = p.requests;
  const llm = call.spendsLLM ? p.llmTokens : undefined;
  const estimate = llm !== undefined ? p.estimate(call, llm) : 0;
  if (requests !== undefined && llm !== undefined) {
    // Both buckets at once. One failing (a deadline) stops the other's wait, which then gives its
    // tokens back; the first failure in this order is the one thrown.
    const stop = p.takeStop();
    const both = signal !== undefined ? AbortSignal.any([signal, stop.signal]) : stop.signal;
    const r = acquireNow(requests, user, { signal: both, maxWaitMs });
    const l = acquireNow(llm, user, { cost: estimate, signal: both, maxWaitMs });
    if (!(r instanceof Promise)) h.requestTaken = true;
    if (!(l instanceof Promise)) h.llmReserved = estimate;
    if (r instanceof Promise || l instanceof Promise) return takeBoth(p, h, r, l, stop, estimate, signal);
    // Neither waited: nothing listens to the controller any more, so the next attempt may use it.
    if (signal === undefined) p.spareStop(stop);
    return undefined;
  }
  if (requests !== undefined) return takeOne(requests, user, signal, maxWaitMs, undefined, h);
  if (llm !== undefined) return takeOne(llm, user, signal, maxWaitMs, estimate, h);
  return undefined;
}

/** takeOne takes from one bucket: a request token (`cost` undefined) or `cost` LLM tokens. */
function takeOne(
  limiter: RateLimiter,
  user: string,
  signal: AbortSignal | undefined,
  maxWaitMs: number,
  cost: number | undefined,
  h: Holdings,
): Promise<void> | undefined {
  // One bucket: nothing else to stop, so the caller's signal is all it needs.
  const options =
    cost === undefined
      ? signal !== undefined
        ? { signal, maxWaitMs }
        : { maxWaitMs }
      : signal !== undefined
        ? { cost, signal, maxWaitMs }
        : { cost, maxWaitMs };
  const taken = () => {
    if (cost === undefined) h.requestTaken = true;
    else h.llmReserved = cost;
  };
  const grant = acquireNow(limiter, user, options);
  if (!(grant instanceof Promise)) {
    taken();
    return undefined;
  }
  return grant.then(taken);
}

/** takeBoth is the waiting part of takeTokens with both buckets, one or both still pending. */
async function takeBoth(
  p: Pipeline,
  h: Holdings,
  r: Grant | Promise<Grant>,
  l: Grant | Promise<Grant>,
  stop: AbortController,
  estimate: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const failed = (e: unknown) => {
    stop.abort();
    return { e };
  };
  const rp =
    r instanceof Promise
      ? r.then(() => {
          h.requestTaken = true;
          return undefined;
        }, failed)
      : undefined;
  const lp =
    l instanceof Promise
      ? l.then(() => {
          h.llmReserved = estimate;
          return undefined;
        }, failed)
      : undefined;
  const first = (await rp) ?? (await lp);
  if (first !== undefined) {
    await lp; // settled before giving back what it took
    throw first.e;
  }
  if (signal === undefined) p.spareStop(stop);
}

/**
 * takeShares waits for `call`'s fair share of its pool: a request from the shared `requests`
 * pool and its LLM-token estimate (capped at the pool's capacity) from the shared `llmTokens`
 * pool, both at once. One failing (a deadline) stops the other's wait; the first failure is
 * thrown once both are settled, so that `h` records all that was taken.
 */
async function takeShares(
  p: Pipeline,
  call: Call,
  h: Holdings,
  signal: AbortSignal | undefined,
  maxWaitMs: number,
): Promise<void> {
  const pool = call.pool as string;
  const key = call.shareKey;
  const requests = p.sharedRequests;
  const llm = call.spendsLLM ? p.sharedLLMTokens : undefined;
  const wait = maxWaitMs > 0 ? maxWaitMs : 0;
  if (requests === undefined || llm === undefined) {
    if (requests !== undefined) {
      await requests.acquire(key, signal !== undefined ? { pool, signal, maxWaitMs: wait } : { pool, maxWaitMs: wait });
      h.sharedRequestTaken = true;
    } else if (llm !== undefined) {
      const cost = poolEstimate(p, call, llm, pool);
      await llm.acquire(
        key,
        signal !== undefined ? { cost, pool, signal, maxWaitMs: wait } : { cost, pool, maxWaitMs: wait },
      );
      h.sharedLLMReserved = cost;
    }
    return;
  }
  const cost = poolEstimate(p, call, llm, pool);
  const stop = new AbortController();
  const both = signal !== undefined ? AbortSignal.any([signal, stop.signal]) : stop.signal;
  let first: { e: unknown } | undefined;
  const failed = (e: unknown) => {
    first ??= { e };
    stop.abort();
  };
  await Promise.all([
    requests.acquire(key, { pool, signal: both, maxWaitMs: wait }).then(() => {
      h.sharedRequestTaken = true;
    }, failed),
    llm.acquire(key, { cost, pool, signal: both, maxWaitMs: wait }).then(() => {
      h.sharedLLMReserved = cost;
    }, failed),
  ]);
  if (first !== undefined) throw first.e;
}

/** poolEstimate is `call`'s LLM-token estimate, at most `pool`'s capacity (a pool with no limit: uncapped). */
function poolEstimate(p: Pipeline, call: Call, llm: SharedLimiter, pool: string): number {
  const guess = p.guess(call);
  const capacity = llm.policyFor(pool)?.capacity;
  return capacity !== undefined && capacity < guess ? capacity : guess;
}

/** giveBack returns everything `h` holds: its tokens, its shares of the pools, and its slot. */
export function giveBack(p: Pipeline, call: Call, h: Holdings): void {
  if (h.requestTaken && p.requests !== undefined) p.refund(p.requests, call.user, 1);
  if (h.llmReserved > 0 && p.llmTokens !== undefined) p.refund(p.llmTokens, call.user, h.llmReserved);
  if (h.sharedRequestTaken && p.sharedRequests !== undefined) p.refundShare(p.sharedRequests, call, 1);
  if (h.sharedLLMReserved > 0 && p.sharedLLMTokens !== undefined)
    p.refundShare(p.sharedLLMTokens, call, h.sharedLLMReserved);
  h.requestTaken = false;
  h.llmReserved = 0;
  h.sharedRequestTaken = false;
  h.sharedLLMReserved = 0;
  h.release?.();
}
