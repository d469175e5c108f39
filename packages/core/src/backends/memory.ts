import type { Backend } from '../backend.js';
import {
  type BucketState,
  COST_EPSILON,
  type Decision,
  type Reservation,
  giveBack,
  reserve,
  resetAfter,
  tryTake,
  wholeTokens,
} from '../bucket.js';
import { InvalidOptionsError } from '../errors.js';
import type { Policy } from '../policy.js';
import { describe } from '../policy.js';

/** MemoryBackendOptions configures a {@link MemoryBackend}. */
export interface MemoryBackendOptions {
  /**
   * The clock, in ms. Inject a fake one in tests to run the buckets on fixed instants.
   * @default performance.now
   */
  clock?: () => number;
}

/**
 * The buckets of one name, in a compact layout: the Map holds only a slot number per key (a small
 * integer, no object), and the slot's tokens and updatedAt sit side by side in one Float64Array.
 * An idle bucket costs its Map entry, 16 bytes of doubles and a policy pointer, about 60 bytes
 * plus its key (an object per bucket would cost twice that, and a pointer chase on every call).
 */
interface Store {
  readonly index: Map<string, number>;
  /** [tokens, updatedAt] of slot i at 2i, 2i + 1. */
  data: Float64Array;
  /** The policy that says when slot i is full again. */
  policies: Array<Policy | undefined>;
  /** Slots freed by sweeps, reused before new ones. */
  readonly free: number[];
  /** Slots handed out so far (the high-water mark). */
  used: number;
  /**
   * Only in a HybridBackend's local buckets: per slot, when Redis last said the key's bucket
   * would be full (-Infinity: unknown). A slot is not swept while this is in the future.
   */
  aux: Float64Array | undefined;
}

/**
 * Internal to the package (not exported from its index): the hybrid's one-lookup rejection path
 * and what it learns from Redis, kept in the local bucket's slot.
 */
export const HYBRID_TRY: unique symbol = Symbol('tollgate.hybridTry');
export const HYBRID_LEARN: unique symbol = Symbol('tollgate.hybridLearn');

/** Buckets are swept when the map has grown this much since the last sweep. */
const MIN_SWEEP_SIZE = 1024;
const INITIAL_SLOTS = 64;

/**
 * MemoryBackend keeps buckets in a Map in this process: no I/O, a decision well under a
 * microsecond. Buckets refill lazily when touched (no timer per key), and a bucket that has
 * refilled to capacity is dropped the next time the map is swept — a missing bucket is a full
 * one, so this changes no decision and keeps memory bounded with millions of users. Sweeps run
 * when the map has doubled since the last one (amortised O(1) a call), or on {@link prune}.
 *
 * Safe for concurrent use within one process (JavaScript runs one decision at a time). Not
 * shared across processes: use {@link RedisBackend} or {@link HybridBackend} for that.
 *
 * @example const limiter = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 10, per: '1s' } })
 */
export class MemoryBackend implements Backend {
  readonly kind = 'memory';
  readonly #clock: () => number;
  readonly #stores = new Map<string, Store>();
  #lastName = '';
  /** The last key decided on and its slot in #last: a key called in a tight loop skips the Map. */
  #lastKey: string | undefined;
  #lastSlot = 0;
  #last: Store | undefined;
  /** The store #locate looked in (a field, so the hot path allocates no pair). */
  #found: Store | undefined;
  #size = 0;
  #sweepAt = MIN_SWEEP_SIZE;
  /** One bucket lent to the math of bucket.ts, loaded from and stored back to a slot. */
  readonly #b: BucketState = { tokens: 0, updatedAt: 0 };
  /** The last rejection and the store and slot it was for: an identical one is answered with it. */
  #rejected: Decision = REJECTED_NONE;
  #rejectedStore: Store | undefined;
  #rejectedSlot = -1;

  constructor(options: MemoryBackendOptions = {}) {
    if (typeof options !== 'object' || options === null) {
      throw new InvalidOptionsError(`invalid MemoryBackend options: must be an object (received ${describe(options)})`);
    }
    const clock = options.clock ?? defaultClock;
    if (typeof clock !== 'function') {
      throw new InvalidOptionsError(
        `invalid MemoryBackend options: clock must be a function returning ms (received ${describe(clock)})`,
        [{ path: 'clock', message: 'must be a function' }],
      );
    }
    this.#clock = clock;
  }

  /**
   * The slot of (`name`, `key`), or undefined; the store it was looked up in is left in #found.
   * The last key found is remembered, so a key called again at once skips the Map.
   */
  #locate(name: string, key: string): number | undefined {
    if (key === this.#lastKey && name === this.#lastName) {
      this.#found = this.#last;
      return this.#lastSlot;
    }
    const st = name === this.#lastName && this.#last !== undefined ? this.#last : this.#store(name);
    this.#found = st;
    const slot = st.index.get(key);
    if (slot !== undefined) {
      this.#lastKey = key;
      this.#lastSlot = slot;
    }
    return slot;
  }

  /** The number of buckets held (full ones not yet swept included). */
  get size(): number {
    return this.#size;
  }

  tryTake(name: string, key: string, policy: Policy, cost: number): Decision {
    const now = this.#clock();
    const slot = this.#locate(name, key);
    const st = this.#found as Store;
    if (slot === undefined) return this.#tryNew(st, key, policy, now, cost);
    const wait = take(st.data, slot * 2, policy, now, cost);
    const tokens = st.data[slot * 2] as number;
    if (st.policies[slot] !== policy) st.policies[slot] = policy;
    if (wait === 0) return { allowed: true, remaining: wholeTokens(tokens), retryAfterMs: 0, resetAfterMs: resetAfter(tokens, policy) };
    return this.#rejection(st, slot, wholeTokens(tokens), wait, resetAfter(tokens, policy));
  }

  /** tryTake on a key with no bucket (a full one), kept if the decision took from it. */
  #tryNew(st: Store, key: string, policy: Policy, now: number, cost: number): Decision {
    const b = this.#b;
    b.tokens = policy.capacity;
    b.updatedAt = now;
    const d = tryTake(b, policy, now, cost);
    this.#keep(st, key, policy, false);
    return d;
  }

  /**
   * A rejection. Over-limit callers hammer one key with the same answer for a millisecond at a
   * time: the same frozen Decision is handed out again while nothing in it changed, so a
   * rejection storm allocates nothing (RateLimiter then reuses the promise it made for it too).
   */
  #rejection(st: Store, slot: number, remaining: number, retryAfterMs: number, resetAfterMs: number): Decision {
    const last = this.#rejected;
    if (
      last.retryAfterMs === retryAfterMs &&
      last.resetAfterMs === resetAfterMs &&
      last.remaining === remaining &&
      this.#rejectedSlot === slot &&
      this.#rejectedStore === st
    ) {
      return last;
    }
    const d = Object.freeze({ allowed: false, remaining, retryAfterMs, resetAfterMs });
    this.#rejected = d;
    this.#rejectedStore = st;
    this.#rejectedSlot = slot;
    return d;
  }

  /**
   * The hybrid's pre-check, one clock read and one lookup: rejects (with an honest retryAfterMs)
   * when Redis's last answer says the cost cannot be there yet or the local bucket (`local`, the
   * policy with headroom) lacks it; otherwise charges the local bucket and returns undefined.
   * @internal
   */
  [HYBRID_TRY](name: string, key: string, local: Policy, policy: Policy, cost: number): Decision | undefined {
    const now = this.#clock();
    const slot = this.#locate(name, key);
    const st = this.#found as Store;
    if (slot === undefined) {
      // Nothing learnt from Redis for this key, and a full local bucket.
      const d = this.#tryNew(st, key, local, now, cost);
      if (d.allowed) return undefined;
      return { allowed: false, remaining: 0, retryAfterMs: d.retryAfterMs, resetAfterMs: hybridReset(policy, Number.NEGATIVE_INFINITY, now) };
    }
    const fullAt = st.aux === undefined ? Number.NEGATIVE_INFINITY : (st.aux[slot] as number);
    // fullAt came from a ceil'd resetAfterMs: 1 ms early is the honest bound. Tokens never come
    // back faster than the policy's rate, so Redis cannot hold `cost` before this.
    const redisWait = Math.ceil(fullAt - 1 - (policy.capacity - cost) / policy.ratePerMs - now);
    if (redisWait > 0) return this.#rejection(st, slot, 0, redisWait, hybridReset(policy, fullAt, now));
    const wait = take(st.data, slot * 2, local, now, cost);
    if (st.policies[slot] !== local) st.policies[slot] = local;
    // The local bucket is looser than Redis's, so its "no" is certain.
    return wait === 0 ? undefined : this.#rejection(st, slot, 0, wait, hybridReset(policy, fullAt, now));
  }

  /**
   * Records, in `key`'s local bucket slot, that Redis's bucket is full `resetAfterMs` from now
   * (forgets it when <= 0). A slot holding such knowledge is kept until that moment passes.
   * @internal
   */
  [HYBRID_LEARN](name: string, key: string, local: Policy, resetAfterMs: number): void {
    const st = name === this.#lastName && this.#last !== undefined ? this.#last : this.#store(name);
    let slot = st.index.get(key);
    if (resetAfterMs <= 0) {
      if (slot !== undefined && st.aux !== undefined) st.aux[slot] = Number.NEGATIVE_INFINITY;
      return;
    }
    const now = this.#clock();
    if (slot === undefined) {
      const b = this.#b;
      b.tokens = local.capacity;
      b.updatedAt = now;
      slot = this.#keep(st, key, local, true) as number;
    }
    if (st.aux === undefined) {
      st.aux = new Float64Array(st.data.length / 2).fill(Number.NEGATIVE_INFINITY);
    }
    st.aux[slot] = now + resetAfterMs;
  }

  reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Reservation {
    const now = this.#clock();
    const st = this.#store(name);
    const slot = st.index.get(key);
    const b = this.#b;
    if (slot === undefined) {
      b.tokens = policy.capacity;
      b.updatedAt = now;
      const r = reserve(b, policy, now, cost, maxWaitMs);
      this.#keep(st, key, policy, false);
      return r;
    }
    const data = st.data;
    const i = slot * 2;
    b.tokens = data[i] as number;
    b.updatedAt = data[i + 1] as number;
    const r = reserve(b, policy, now, cost, maxWaitMs);
    data[i] = b.tokens;
    data[i + 1] = b.updatedAt;
    if (st.policies[slot] !== policy) st.policies[slot] = policy;
    return r;
  }

  refund(name: string, key: string, policy: Policy, amount: number): void {
    const st = this.#stores.get(name);
    const slot = st?.index.get(key);
    // A missing bucket is full: there is nothing to give back to.
    if (st === undefined || slot === undefined) return;
    const b = this.#b;
    const i = slot * 2;
    b.tokens = st.data[i] as number;
    b.updatedAt = st.data[i + 1] as number;
    giveBack(b, policy, this.#clock(), amount);
    st.data[i] = b.tokens;
    st.data[i + 1] = b.updatedAt;
    st.policies[slot] = policy;
  }

  /** prune drops every bucket that has refilled to capacity; returns how many it dropped. */
  prune(): number {
    const now = this.#clock();
    this.#lastKey = undefined;
    let dropped = 0;
    for (const [name, st] of this.#stores) {
      const data = st.data;
      for (const [key, slot] of st.index) {
        const p = st.policies[slot] as Policy;
        const full =
          (data[slot * 2] as number) + (now - (data[slot * 2 + 1] as number)) * p.ratePerMs >= p.capacity &&
          (st.aux === undefined || (st.aux[slot] as number) <= now);
        if (full) {
          st.index.delete(key);
          st.policies[slot] = undefined;
          st.free.push(slot);
          dropped++;
        }
      }
      if (st.index.size === 0) {
        this.#stores.delete(name);
        if (this.#last === st) this.#last = undefined;
      }
    }
    this.#size -= dropped;
    this.#sweepAt = Math.max(MIN_SWEEP_SIZE, this.#size * 2);
    return dropped;
  }

  /** clear drops every bucket. */
  clear(): void {
    this.#lastKey = undefined;
    this.#stores.clear();
    this.#last = undefined;
    this.#size = 0;
    this.#sweepAt = MIN_SWEEP_SIZE;
  }

  #store(name: string): Store {
    if (name === this.#lastName && this.#last !== undefined) return this.#last;
    let st = this.#stores.get(name);
    if (st === undefined) {
      st = {
        index: new Map(),
        data: new Float64Array(INITIAL_SLOTS * 2),
        policies: [],
        free: [],
        used: 0,
        aux: undefined,
      };
      this.#stores.set(name, st);
    }
    this.#lastName = name;
    this.#last = st;
    this.#lastKey = undefined;
    return st;
  }

  /**
   * Stores the lent bucket, just decided on, as `key`'s. A bucket still full after the decision
   * (a rejection cannot happen on a full bucket unless cost > capacity, which the limiter
   * refuses) need not be stored.
   */
  #keep(st: Store, key: string, policy: Policy, force: boolean): number | undefined {
    const b = this.#b;
    if (!force && !(b.tokens < policy.capacity)) return undefined;
    if (this.#size >= this.#sweepAt) {
      this.prune();
      // #store(name) just returned `st`, so #lastName is its name; the sweep drops a store left
      // empty, and this bucket is about to go in it.
      if (this.#stores.get(this.#lastName) !== st) {
        this.#stores.set(this.#lastName, st);
        this.#last = st;
      }
    }
    let slot = st.free.pop();
    if (slot === undefined) {
      slot = st.used++;
      if (slot * 2 >= st.data.length) {
        const grown = new Float64Array(st.data.length * 2);
        grown.set(st.data);
        st.data = grown;
        if (st.aux !== undefined) {
          const aux = new Float64Array(st.aux.length * 2).fill(Number.NEGATIVE_INFINITY);
          aux.set(st.aux);
          st.aux = aux;
        }
      }
    }
    st.data[slot * 2] = b.tokens;
    st.data[slot * 2 + 1] = b.updatedAt;
    st.policies[slot] = policy;
    if (st.aux !== undefined) st.aux[slot] = Number.NEGATIVE_INFINITY;
    st.index.set(key, slot);
    this.#size++;
    return slot;
  }
}

/** resetAfterMs of a hybrid pre-check rejection; Redis's bucket is full at `fullAt` (-Infinity: unknown). */
function hybridReset(policy: Policy, fullAt: number, now: number): number {
  const reset = Math.ceil(fullAt - now);
  const floor = Math.ceil(1 / policy.ratePerMs);
  return reset > floor ? reset : floor;
}

const defaultClock = (): number => performance.now();
const REJECTED_NONE: Decision = Object.freeze({ allowed: false, remaining: -1, retryAfterMs: -1, resetAfterMs: -1 });

/**
 * take is bucket.ts's tryTake on a slot of `data` (tokens at i, updatedAt at i + 1), with the same
 * operations in the same order: refill, then take `cost` if it is there. Returns the wait (0 when
 * taken); the tokens after are left in data[i].
 */
function take(data: Float64Array, i: number, policy: Policy, now: number, cost: number): number {
  let elapsed = now - (data[i + 1] as number);
  if (elapsed > 0) data[i + 1] = now;
  else elapsed = 0;
  const tokens = Math.min(policy.capacity, (data[i] as number) + elapsed * policy.ratePerMs);
  const deficit = cost - tokens;
  const wait = deficit > cost * COST_EPSILON ? Math.ceil(deficit / policy.ratePerMs) : 0;
  data[i] = wait === 0 ? tokens - cost : tokens;
  return wait;
}
