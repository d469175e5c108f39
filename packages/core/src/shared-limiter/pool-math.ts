/**
 * The arithmetic of a shared pool, pure: every function takes `now` (ms), so the memory pools,
 * the Lua script's parity test and the unit tests run it on fixed instants with no sleeping.
 *
 * `pool-script.ts` is a line-for-line copy of this arithmetic in Lua (same operations in the same
 * order on IEEE doubles, keys visited in insertion order), so memory and Redis decide identically.
 */
import { COST_EPSILON, resetAfter, wholeTokens } from '../bucket.js';
import type { Policy } from '../policy.js';

/**
 * SHARE_GRACE_MS is how long a key stays among the waiting keys after its head's turn, when the
 * head said more callers of its process wait behind it: the time the next head has to ask. A key
 * whose process died or went quiet without saying so holds others back at most this long.
 */
export const SHARE_GRACE_MS = 250;

/** KeyShare is one waiting key's standing in a pool. */
export interface KeyShare {
  /** The virtual counter: tokens this key was granted while waiting, divided by its weight. */
  v: number;
  /** Its weight when it last asked. */
  w: number;
  /**
   * Until when (ms) it counts as waiting. After that it is idle: its counter is kept while other
   * keys wait (so coming back lifts it to the least-served waiting key's, never lowers it) and
   * forgotten once the pool's virtual time passes it or no key waits.
   */
  until: number;
  /** When (ms) the last of its heads told to come back was told to (its tickets, in order). */
  turn: number;
}

/** PoolState is one pool: its bucket, its virtual time, what the provider said, its waiting keys. */
export interface PoolState {
  /** Tokens in the bucket (negative: reserved into debt). */
  tokens: number;
  /**
   * When `tokens` holds (ms). Later than now while a pause lasts and a grant was charged against
   * the level at the pause's end (its start): the bucket then earns nothing until that instant.
   */
  updatedAt: number;
  /** The pool's virtual time: no waiting key's counter is below it; a (re)appearing key starts at it. */
  vt: number;
  /** Nothing starts before this instant (ms; 0: none): the provider's retry-after. */
  blockedUntil: number;
  /** The provider's limit replacing the policy's rate while below it (0: none). */
  limit: number;
  /** When the observed limit lapses (ms); never before blockedUntil + per while a pause holds. */
  limitUntil: number;
  /** The waiting keys, in the order they (re)appeared. */
  readonly keys: Map<string, KeyShare>;
}

/** What a decision answered. */
export const GRANTED = 1;
/** Try: not allowed now (ms: the estimated wait). */
export const REFUSED = 0;
/** Reserve: it would wait more than maxWaitMs (ms: the estimated wait); nothing taken. */
export const TOO_LONG = 2;
/** Reserve: not this key's turn yet; ask again after `ms` (nothing taken). */
export const DEFERRED = 3;
export type PoolStatus = typeof GRANTED | typeof REFUSED | typeof TOO_LONG | typeof DEFERRED;

/** PoolAnswer is a decision: its status, a wait in ms (see the statuses), and the bucket after it. */
export interface PoolAnswer {
  status: PoolStatus;
  /** GRANTED: ms until the caller may start. DEFERRED: ms until it asks again. Else: estimated wait. */
  ms: number;
  /** Whole tokens left in the pool's bucket (never negative). */
  remaining: number;
  /** Ms until the pool's bucket is full again if nothing more is taken. */
  resetAfterMs: number;
}

/** What the provider said about a pool (see SharedLimiter.observe); negative or NaN: not said. */
export interface Observation {
  limit: number;
  remaining: number;
  resetAfterMs: number;
  retryAfterMs: number;
}

/** newPool returns a full, idle pool at `now`. */
export function newPool(policy: Policy, now: number): PoolState {
  return { tokens: policy.capacity, updatedAt: now, vt: 0, blockedUntil: 0, limit: 0, limitUntil: 0, keys: new Map() };
}

/** The policy in force: the observed limit (capacity scaled with it) while it holds. */
export interface Effective {
  ratePerMs: number;
  capacity: number;
}

/** effective returns the rate and capacity in force at `now`, dropping a lapsed observed limit. */
export function effective(s: PoolState, policy: Policy, now: number): Effective {
  if (s.limit > 0) {
    if (now < s.limitUntil)
      return { ratePerMs: s.limit / policy.perMs, capacity: policy.capacity * (s.limit / policy.rate) };
    s.limit = 0;
    s.limitUntil = 0;
  }
  return policy;
}

/**
 * refillPool adds the tokens earned since `updatedAt`, capped at capacity (bucket.ts's refill);
 * a future `updatedAt` (a level charged at a pause's end) earns nothing yet.
 */
function refillPool(s: PoolState, e: Effective, now: number): void {
  let elapsed = now - s.updatedAt;
  if (elapsed > 0) s.updatedAt = now;
  else elapsed = 0;
  s.tokens = Math.min(e.capacity, s.tokens + elapsed * e.ratePerMs);
}

/** aheadMs is how far (ms, whole) the bucket's level lies ahead of `now`: 0 but during a pause. */
function aheadMs(s: PoolState, now: number): number {
  return s.updatedAt > now ? Math.ceil(s.updatedAt - now) : 0;
}

function waitMs(tokens: number, cost: number, ratePerMs: number): number {
  const deficit = cost - tokens;
  return deficit > cost * COST_EPSILON ? Math.ceil(deficit / ratePerMs) : 0;
}

/**
 * decide is one call's turn on the pool at `now`: `key` (weight `weight`) asks for `cost` tokens.
 * Mode 't' (try) takes them only if it may start now; mode 'r' (reserve) takes them into debt
 * when it is the key's turn and the wait is at most `maxWaitMs` (negative: no limit), or says
 * when to ask again (DEFERRED), taking nothing. `more`: callers of the asking process wait on
 * `key` behind this one, so the key stays waiting for SHARE_GRACE_MS after its turn.
 *
 * A grant pushed to a pause's end (`blockedUntil`) is charged against the bucket's level at that
 * instant: the bucket is advanced to it (refilled, capped) before the cost is taken, so the heads
 * that reserved during the pause start with at most capacity + r·T between them, not on top of a
 * bucket that refilled to full meanwhile.
 *
 * The turn: the key's counter is lifted to the least-served waiting key's when it (re)appears;
 * the tokens owed to waiting keys with lower counters (to bring them level) come first, unless
 * the bucket holds them and this cost too. See SharedLimiter's doc for why this is fair.
 */
export function decide(
  s: PoolState,
  policy: Policy,
  now: number,
  key: string,
  cost: number,
  weight: number,
  mode: 't' | 'r',
  maxWaitMs: number,
  more: boolean,
): PoolAnswer {
  const e = effective(s, policy, now);
  refillPool(s, e, now);
  const mine = s.keys.get(key);
  let least = Number.POSITIVE_INFINITY;
  if (s.keys.size !== 0) {
    for (const [k, j] of s.keys) {
      if (k === key) continue;
      if (j.until > now) {
        if (j.v < least) least = j.v;
      } else if (j.v <= s.vt) s.keys.delete(k);
    }
  }
  // A key (re)appearing starts level with the least-served waiting key (the lift), or stays
  // above it if it was served more before it went idle: idle time earns no credit either way.
  const lift = least === Number.POSITIVE_INFINITY || least < s.vt ? s.vt : least;
  let v = mine === undefined ? lift : mine.until > now || mine.v > lift ? mine.v : lift;
  let owed = 0;
  let lowerUntil = 0;
  let wsum = weight;
  if (s.keys.size !== 0) {
    for (const [k, j] of s.keys) {
      if (k === key || j.until <= now) continue;
      wsum += j.w;
      if (j.v < v) {
        owed += j.w * (v - j.v);
        if (j.until > lowerUntil) lowerUntil = j.until;
      }
    }
  }
  const blocked = s.blockedUntil > now ? Math.ceil(s.blockedUntil - now) : 0;
  const ahead = aheadMs(s, now);
  let status: PoolStatus;
  let ms: number;
  if (owed <= 0 || s.tokens - owed >= cost) {
    const w = ahead + waitMs(s.tokens, cost, e.ratePerMs);
    ms = w < blocked ? blocked : w;
    if (mode === 't' ? ms === 0 : maxWaitMs < 0 || ms <= maxWaitMs) {
      if (ms > w) {
        // Pushed to the pause's end: take the cost from the level the bucket has then.
        s.tokens = Math.min(e.capacity, s.tokens + (now + ms - s.updatedAt) * e.ratePerMs);
        s.updatedAt = now + ms;
      }
      s.tokens -= cost;
      v += cost / weight;
      let until = now + ms;
      if (more) until += SHARE_GRACE_MS;
      if (mine !== undefined && mine.until > until) until = mine.until;
      // Kept while waiting, and, idle, while other keys wait (its counter then matters).
      if (until > now || least !== Number.POSITIVE_INFINITY) {
        if (mine !== undefined) {
          mine.v = v;
          mine.w = weight;
          mine.until = until;
        } else s.keys.set(key, { v, w: weight, until, turn: 0 });
      } else if (mine !== undefined) s.keys.delete(key);
      status = GRANTED;
    } else status = mode === 't' ? REFUSED : TOO_LONG;
  } else {
    ms = ahead + waitMs(s.tokens - owed, cost, e.ratePerMs);
    if (ms < blocked) ms = blocked;
    if (mode === 't') status = REFUSED;
    else if (maxWaitMs >= 0 && ms > maxWaitMs) status = TOO_LONG;
    else {
      // Ask again when the bucket has refilled what is owed to the keys below, or when the last
      // of them stops counting as waiting, whichever comes first.
      let d = ahead + Math.ceil((owed - s.tokens) / e.ratePerMs);
      if (lowerUntil - now < d) d = Math.ceil(lowerUntil - now);
      if (d < 1) d = 1;
      // Another head of this key (another process) was told a time already: come after it, by
      // this key's share of the rate, so heads of one key do not all ask at once.
      if (mine !== undefined && mine.turn > now) {
        const next = Math.ceil(mine.turn - now + (cost * wsum) / weight / e.ratePerMs);
        if (next > d) d = next;
      }
      let until = now + d + SHARE_GRACE_MS;
      if (mine !== undefined) {
        if (mine.until > until) until = mine.until;
        mine.v = v;
        mine.w = weight;
        mine.until = until;
        mine.turn = now + d;
      } else s.keys.set(key, { v, w: weight, until, turn: now + d });
      ms = d;
      status = DEFERRED;
    }
  }
  settleVt(s, now);
  return {
    status,
    ms,
    remaining: wholeTokens(s.tokens),
    resetAfterMs: aheadMs(s, now) + resetAfter(s.tokens, e as Policy),
  };
}

/**
 * pauseLeft is a held grant's confirmation at `now`: 0 when it may start, else the ms (whole)
 * until the provider's pause (`blockedUntil`) ends, when it confirms again. It takes nothing (the
 * grant's tokens were taken when it was granted) and changes nothing.
 */
export function pauseLeft(s: PoolState, now: number): number {
  return s.blockedUntil > now ? Math.ceil(s.blockedUntil - now) : 0;
}

/**
 * The virtual time follows the least-served waiting key up, never down while keys wait; with
 * none waiting it starts over at 0 and every counter is forgotten (only differences of counters
 * matter, and an idle pool is then the same as a missing one). An idle key's counter at or below
 * the virtual time is forgotten too: coming back would lift it to at least that.
 */
function settleVt(s: PoolState, now: number): void {
  let least = Number.POSITIVE_INFINITY;
  for (const j of s.keys.values()) if (j.until > now && j.v < least) least = j.v;
  if (least === Number.POSITIVE_INFINITY) {
    s.keys.clear();
    s.vt = 0;
    return;
  }
  if (least > s.vt) s.vt = least;
  for (const [k, j] of s.keys) if (j.until <= now && j.v <= s.vt) s.keys.delete(k);
}

/**
 * giveBackPool returns `amount` tokens to the pool at `now` (capped at capacity), and takes
 * them off `key`'s counter if it is waiting (never below the pool's virtual time).
 */
export function giveBackPool(s: PoolState, policy: Policy, now: number, key: string, amount: number): void {
  const e = effective(s, policy, now);
  refillPool(s, e, now);
  s.tokens = Math.min(e.capacity, s.tokens + amount);
  const mine = s.keys.get(key);
  if (mine !== undefined) {
    const v = mine.v - amount / mine.w;
    mine.v = v < s.vt ? s.vt : v;
  }
  settleVt(s, now);
}

/**
 * observePool applies what the provider said at `now`: a `limit` below the policy's rate
 * replaces it (capacity scaled alike) for max(per, resetAfterMs), and while a pause holds, until
 * at least one `per` after its end (else a pause longer than `per` would end at the policy's
 * higher rate); one at or above it lifts an earlier one; a lower `remaining` empties the bucket
 * down to it (during a pause: the level the bucket will have at its end, conservatively);
 * `retryAfterMs` starts nothing before now + retryAfterMs. Negative or NaN fields are ignored.
 *
 * A pause moves the bucket to its end at once: the grants held to start later (the bucket's
 * debt) will start there, and wait out the pause as they confirm, so they are charged against
 * the bucket's level at its end, refilled from no debt (capped), not against the refill of the
 * pause: a bucket in debt by D ends the pause at min(capacity, r·T) − D, not min(capacity, r·T − D),
 * and the held grants and those granted during the pause start with at most capacity between them.
 */
export function observePool(s: PoolState, policy: Policy, now: number, o: Observation): void {
  let e = effective(s, policy, now);
  refillPool(s, e, now);
  if (o.limit > 0) {
    if (o.limit < policy.rate) {
      s.limit = o.limit;
      s.limitUntil = now + (o.resetAfterMs > policy.perMs ? o.resetAfterMs : policy.perMs);
    } else {
      s.limit = 0;
      s.limitUntil = 0;
    }
    e = effective(s, policy, now);
    if (s.tokens > e.capacity) s.tokens = e.capacity;
  }
  if (o.remaining >= 0 && o.remaining < s.tokens) s.tokens = o.remaining;
  if (o.retryAfterMs > 0 && now + o.retryAfterMs > s.blockedUntil) s.blockedUntil = now + o.retryAfterMs;
  if (s.blockedUntil > s.updatedAt) {
    const debt = s.tokens < 0 ? -s.tokens : 0;
    s.tokens = Math.min(e.capacity, s.tokens + debt + (s.blockedUntil - s.updatedAt) * e.ratePerMs) - debt;
    s.updatedAt = s.blockedUntil;
  }
  if (s.limit > 0 && s.blockedUntil > now && s.blockedUntil + policy.perMs > s.limitUntil)
    s.limitUntil = s.blockedUntil + policy.perMs;
  settleVt(s, now);
}

/**
 * keepFor returns how long (ms) the pool must be kept at `now`: until its bucket is full, its
 * last waiting key lapses, and what the provider said lapses. 0: it is idle and may be dropped
 * (a missing pool is a full, idle one).
 */
export function keepFor(s: PoolState, policy: Policy, now: number): number {
  const e = effective(s, policy, now);
  let until = now + aheadMs(s, now) + resetAfter(s.tokens, e as Policy);
  for (const j of s.keys.values()) if (j.until > until) until = j.until;
  if (s.blockedUntil > until) until = s.blockedUntil;
  // After an observed limit lapses the bucket refills to the policy's capacity: keep it until then.
  if (s.limit > 0 && s.limitUntil + policy.capacity / policy.ratePerMs > until)
    until = s.limitUntil + policy.capacity / policy.ratePerMs;
  return until > now ? Math.ceil(until - now) : 0;
}
