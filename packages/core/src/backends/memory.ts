import type { Backend } from '../backend.js';
import { type BucketState, type Decision, type Reservation, giveBack, reserve, tryTake } from '../bucket.js';
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
}

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
  #last: Store | undefined;
  #size = 0;
  #sweepAt = MIN_SWEEP_SIZE;
  /** One bucket lent to the math of bucket.ts, loaded from and stored back to a slot. */
  readonly #b: BucketState = { tokens: 0, updatedAt: 0 };

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

  /** The number of buckets held (full ones not yet swept included). */
  get size(): number {
    return this.#size;
  }

  tryTake(name: string, key: string, policy: Policy, cost: number): Decision {
    const now = this.#clock();
    const st = this.#store(name);
    const slot = st.index.get(key);
    const b = this.#b;
    if (slot === undefined) {
      b.tokens = policy.capacity;
      b.updatedAt = now;
      const d = tryTake(b, policy, now, cost);
      this.#keep(st, key, policy);
      return d;
    }
    const data = st.data;
    const i = slot * 2;
    b.tokens = data[i] as number;
    b.updatedAt = data[i + 1] as number;
    const d = tryTake(b, policy, now, cost);
    data[i] = b.tokens;
    data[i + 1] = b.updatedAt;
    if (st.policies[slot] !== policy) st.policies[slot] = policy;
    return d;
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
      this.#keep(st, key, policy);
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
    let dropped = 0;
    for (const [name, st] of this.#stores) {
      const data = st.data;
      for (const [key, slot] of st.index) {
        const p = st.policies[slot] as Policy;
        const full = (data[slot * 2] as number) + (now - (data[slot * 2 + 1] as number)) * p.ratePerMs >= p.capacity;
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
    this.#stores.clear();
    this.#last = undefined;
    this.#size = 0;
    this.#sweepAt = MIN_SWEEP_SIZE;
  }

  #store(name: string): Store {
    if (name === this.#lastName && this.#last !== undefined) return this.#last;
    let st = this.#stores.get(name);
    if (st === undefined) {
      st = { index: new Map(), data: new Float64Array(INITIAL_SLOTS * 2), policies: [], free: [], used: 0 };
      this.#stores.set(name, st);
    }
    this.#lastName = name;
    this.#last = st;
    return st;
  }

  /**
   * Stores the lent bucket, just decided on, as `key`'s. A bucket still full after the decision
   * (a rejection cannot happen on a full bucket unless cost > capacity, which the limiter
   * refuses) need not be stored.
   */
  #keep(st: Store, key: string, policy: Policy): void {
    const b = this.#b;
    if (!(b.tokens < policy.capacity)) return;
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
      }
    }
    st.data[slot * 2] = b.tokens;
    st.data[slot * 2 + 1] = b.updatedAt;
    st.policies[slot] = policy;
    st.index.set(key, slot);
    this.#size++;
  }
}

const defaultClock = (): number => performance.now();
