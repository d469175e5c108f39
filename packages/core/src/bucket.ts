/**
 * The token-bucket math, pure: every function takes `now` (ms) as an argument, so the memory
 * backend, the Lua script's tests and the unit tests run it on fixed instants with no sleeping.
 *
 * The Lua script in `backends/redis/scripts.ts` is a line-for-line copy of this arithmetic (same
 * operations in the same order on IEEE doubles), so both give identical decisions; a test checks it.
 */
import type { Policy } from './policy.js';

/** BucketState is one bucket: its tokens (may be negative: debt) at `updatedAt` (ms). */
export interface BucketState {
  tokens: number;
  updatedAt: number;
}

/**
 * Decision is the answer to `tryAcquire`. Every field is in tokens or ms. Read-only: a backend
 * may answer a repeated rejection with the same frozen object (MemoryBackend and the hybrid's
 * local pre-check do, so a rejection storm allocates nothing).
 */
export interface Decision {
  /** Whether the cost was taken. */
  readonly allowed: boolean;
  /** Whole tokens left in the bucket after this decision (never negative). */
  readonly remaining: number;
  /** When rejected: ms until the cost could be taken (at least 1). When allowed: 0. */
  readonly retryAfterMs: number;
  /** Ms until the bucket is full again if nothing more is taken. */
  readonly resetAfterMs: number;
}

/**
 * Reservation is the answer to a reserve: whether the cost was taken (into debt if need be) and
 * how long the caller must wait before using it.
 */
export interface Reservation {
  /** Whether the cost was taken. False only when `waitMs` would exceed the caller's maxWaitMs. */
  ok: boolean;
  /** Ms the caller must wait before proceeding (when `ok`), or would have had to wait (when not). */
  waitMs: number;
  /** Whole tokens left after this decision (0 while in debt). */
  remaining: number;
  /** Ms until the bucket is full again if nothing more is taken. */
  resetAfterMs: number;
}

/**
 * Relative slack when comparing tokens with a cost: after waiting exactly `retryAfterMs` a caller
 * must find its tokens there, even when the doubles round a hair below.
 */
export const COST_EPSILON = 1e-9;

/** newBucket returns a full bucket at `now`. */
export function newBucket(policy: Policy, now: number): BucketState {
  return { tokens: policy.capacity, updatedAt: now };
}

/**
 * refill adds the tokens earned since `state.updatedAt`, capped at capacity. A clock that went
 * backwards adds nothing and never moves `updatedAt` back.
 */
export function refill(state: BucketState, policy: Policy, now: number): void {
  let elapsed = now - state.updatedAt;
  if (elapsed > 0) state.updatedAt = now;
  else elapsed = 0;
  state.tokens = refilled(state.tokens, elapsed, policy);
}

/** refilled returns `tokens` plus what `elapsed` ms (>= 0) earn, capped at capacity. */
export function refilled(tokens: number, elapsed: number, policy: Policy): number {
  return Math.min(policy.capacity, tokens + elapsed * policy.ratePerMs);
}

/** waitFor returns the ms until `tokens` reach `cost` (0 when they already do). */
export function waitFor(tokens: number, cost: number, policy: Policy): number {
  const deficit = cost - tokens;
  return deficit > cost * COST_EPSILON ? Math.ceil(deficit / policy.ratePerMs) : 0;
}

/** resetAfter returns the ms until `tokens` refill to capacity. */
export function resetAfter(tokens: number, policy: Policy): number {
  const ms = Math.ceil((policy.capacity - tokens) / policy.ratePerMs);
  return ms > 0 ? ms : 0;
}

/** wholeTokens is the `remaining` reported for a token count. */
export function wholeTokens(tokens: number): number {
  return tokens > 0 ? Math.floor(tokens + COST_EPSILON) : 0;
}

/**
 * take takes `cost` from the bucket at `now` if it holds it (after the refill), and returns the
 * ms until it would (0: taken). {@link tryTake} without building its answer: a caller that answers
 * repeated rejections with one object allocates nothing.
 */
export function take(state: BucketState, policy: Policy, now: number, cost: number): number {
  refill(state, policy, now);
  const wait = waitFor(state.tokens, cost, policy);
  if (wait === 0) state.tokens -= cost;
  return wait;
}

/**
 * tryTake takes `cost` from the bucket at `now` if it holds it; otherwise it changes nothing
 * (but the refill) and says when it would.
 */
export function tryTake(state: BucketState, policy: Policy, now: number, cost: number): Decision {
  const wait = take(state, policy, now, cost);
  return {
    allowed: wait === 0,
    remaining: wholeTokens(state.tokens),
    retryAfterMs: wait,
    resetAfterMs: resetAfter(state.tokens, policy),
  };
}

/**
 * reserve takes `cost` at `now`, into debt if need be, provided the caller would wait at most
 * `maxWaitMs` (negative or Infinity: no limit) for the debt to be repaid.
 */
export function reserve(state: BucketState, policy: Policy, now: number, cost: number, maxWaitMs: number): Reservation {
  refill(state, policy, now);
  const wait = waitFor(state.tokens, cost, policy);
  const ok = maxWaitMs < 0 || wait <= maxWaitMs;
  if (ok) state.tokens -= cost;
  return {
    ok,
    waitMs: wait,
    remaining: wholeTokens(state.tokens),
    resetAfterMs: resetAfter(state.tokens, policy),
  };
}

/** giveBack adds `amount` tokens back at `now`, capped at capacity, and returns the tokens held. */
export function giveBack(state: BucketState, policy: Policy, now: number, amount: number): number {
  refill(state, policy, now);
  state.tokens = Math.min(policy.capacity, state.tokens + amount);
  return state.tokens;
}

/** tokensAt returns the tokens the bucket holds at `now`, without changing it. */
export function tokensAt(state: BucketState, policy: Policy, now: number): number {
  const elapsed = now - state.updatedAt;
  return Math.min(policy.capacity, state.tokens + (elapsed > 0 ? elapsed * policy.ratePerMs : 0));
}
