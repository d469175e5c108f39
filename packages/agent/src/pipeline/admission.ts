/**
 * Admission: taking an attempt's tokens from the user's `requests` and `llmTokens` buckets, and
 * giving them back when the attempt never reaches the provider.
 */
import type { Grant, RateLimiter } from '@tollgate/core';
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
}

/**
 * takeTokens takes `call`'s tokens into `h`: undefined when every bucket granted at once (as
 * MemoryBackend does when the tokens are there), else a promise settled when all are, rejected
 * with the first failure (what was taken stays recorded in `h`, for {@link giveBack}).
 */
export function takeTokens(
  p: Pipeline,
  call: Call,
  h: Holdings,
  signal: AbortSignal | undefined,
): Promise<void> | undefined {
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

/** giveBack returns everything `h` holds: its tokens and its slot. */
export function giveBack(p: Pipeline, call: Call, h: Holdings): void {
  if (h.requestTaken && p.requests !== undefined) p.refund(p.requests, call.user, 1);
  if (h.llmReserved > 0 && p.llmTokens !== undefined) p.refund(p.llmTokens, call.user, h.llmReserved);
  h.requestTaken = false;
  h.llmReserved = 0;
  h.release?.();
}
