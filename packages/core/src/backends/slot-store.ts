/**
 * SlotStore keeps token buckets by (name, key) in a compact layout, for the memory backend and
 * the hybrid's local buckets: a Map per name holds only a slot number per key (a small integer,
 * no object), and the slot's tokens and updatedAt sit side by side in one Float64Array. An idle
 * bucket costs its Map entry, 16 bytes of doubles and a policy pointer, about 60 bytes plus its
 * key (an object per bucket would cost twice that, and a pointer chase on every call).
 *
 * A bucket that has refilled to capacity is dropped when the store is swept: a missing bucket is
 * a full one, so this changes no decision and keeps memory bounded with millions of keys. Sweeps
 * run when the store has doubled since the last one (amortised O(1) a call), or on {@link prune}.
 */
import { type BucketState, type Decision, refilled, waitFor } from '../bucket.js';
import type { Policy } from '../policy.js';

/** The buckets of one name. */
export interface Slots {
  readonly name: string;
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
   * Per slot, an instant (ms) before which it is not swept even when full (-Infinity: none);
   * allocated on the first {@link SlotStore.pin}.
   */
  pinned: Float64Array | undefined;
}

/** A store is swept when it has grown this much since the last sweep. */
const MIN_SWEEP_SIZE = 1024;
const INITIAL_SLOTS = 64;

export class SlotStore {
  readonly #stores = new Map<string, Slots>();
  #lastName = '';
  #last: Slots | undefined;
  /** The last key located and its slot in #last: a key called in a tight loop skips the Map. */
  #lastKey: string | undefined;
  #lastSlot = 0;
  #size = 0;
  #sweepAt = MIN_SWEEP_SIZE;
  /** The Slots the last {@link locate} looked in (a field, so the hot path allocates no pair). */
  found: Slots | undefined;
  /** One bucket lent to the math of bucket.ts: {@link load}ed from a slot, {@link save}d back. */
  readonly bucket: BucketState = { tokens: 0, updatedAt: 0 };
  /** The tokens left in the slot the last {@link take} decided on. */
  tokens = 0;

  /** The number of buckets held (full ones not yet swept included). */
  get size(): number {
    return this.#size;
  }

  /** The slot of (`name`, `key`), or undefined; the Slots it was looked up in are left in {@link found}. */
  locate(name: string, key: string): number | undefined {
    if (key === this.#lastKey && name === this.#lastName) {
      this.found = this.#last;
      return this.#lastSlot;
    }
    const st = this.slotsOf(name);
    this.found = st;
    const slot = st.index.get(key);
    if (slot !== undefined) {
      this.#lastKey = key;
      this.#lastSlot = slot;
    }
    return slot;
  }

  /** The Slots of `name`, made when missing. */
  slotsOf(name: string): Slots {
    if (name === this.#lastName && this.#last !== undefined) return this.#last;
    let st = this.#stores.get(name);
    if (st === undefined) {
      st = {
        name,
        index: new Map(),
        data: new Float64Array(INITIAL_SLOTS * 2),
        policies: [],
        free: [],
        used: 0,
        pinned: undefined,
      };
      this.#stores.set(name, st);
    }
    this.#lastName = name;
    this.#last = st;
    this.#lastKey = undefined;
    return st;
  }

  /** The Slots of `name` if any bucket of it is held. */
  existing(name: string): Slots | undefined {
    return this.#stores.get(name);
  }

  /** Copies slot `slot` into {@link bucket}. */
  load(st: Slots, slot: number): BucketState {
    const b = this.bucket;
    b.tokens = st.data[slot * 2] as number;
    b.updatedAt = st.data[slot * 2 + 1] as number;
    return b;
  }

  /** Copies {@link bucket} back into slot `slot`, whose policy is now `policy`. */
  save(st: Slots, slot: number, policy: Policy): void {
    const b = this.bucket;
    st.data[slot * 2] = b.tokens;
    st.data[slot * 2 + 1] = b.updatedAt;
    if (st.policies[slot] !== policy) st.policies[slot] = policy;
  }

  /**
   * take is bucket.ts's take on slot `slot` in place (the hot path copies nothing into
   * {@link bucket}): refill, then take `cost` if it is there. Returns the wait in ms (0: taken);
   * the tokens after are left in {@link tokens}.
   */
  take(st: Slots, slot: number, policy: Policy, now: number, cost: number): number {
    const data = st.data;
    const i = slot * 2;
    let elapsed = now - (data[i + 1] as number);
    if (elapsed > 0) data[i + 1] = now;
    else elapsed = 0;
    const tokens = refilled(data[i] as number, elapsed, policy);
    const wait = waitFor(tokens, cost, policy);
    const after = wait === 0 ? tokens - cost : tokens;
    data[i] = after;
    this.tokens = after;
    if (st.policies[slot] !== policy) st.policies[slot] = policy;
    return wait;
  }

  /** Sets {@link bucket} to a full bucket of `policy` at `now` (a key with no slot). */
  lendFull(policy: Policy, now: number): BucketState {
    const b = this.bucket;
    b.tokens = policy.capacity;
    b.updatedAt = now;
    return b;
  }

  /**
   * Stores {@link bucket}, just decided on, as `key`'s, and returns its slot. A bucket still full
   * need not be stored (undefined) unless `force`.
   */
  keep(st: Slots, key: string, policy: Policy, force: boolean, now: number): number | undefined {
    const b = this.bucket;
    if (!force && !(b.tokens < policy.capacity)) return undefined;
    if (this.#size >= this.#sweepAt) {
      this.prune(now);
      // The sweep drops a store left empty, and this bucket is about to go in it.
      if (this.#stores.get(st.name) !== st) this.#stores.set(st.name, st);
    }
    let slot = st.free.pop();
    if (slot === undefined) {
      slot = st.used++;
      if (slot * 2 >= st.data.length) {
        const grown = new Float64Array(st.data.length * 2);
        grown.set(st.data);
        st.data = grown;
        if (st.pinned !== undefined) {
          const pinned = new Float64Array(st.pinned.length * 2).fill(Number.NEGATIVE_INFINITY);
          pinned.set(st.pinned);
          st.pinned = pinned;
        }
      }
    }
    st.data[slot * 2] = b.tokens;
    st.data[slot * 2 + 1] = b.updatedAt;
    st.policies[slot] = policy;
    if (st.pinned !== undefined) st.pinned[slot] = Number.NEGATIVE_INFINITY;
    st.index.set(key, slot);
    this.#size++;
    return slot;
  }

  /** Keeps slot `slot` from being swept before `until` (ms; -Infinity: no longer). */
  pin(st: Slots, slot: number, until: number): void {
    if (st.pinned === undefined) {
      if (until === Number.NEGATIVE_INFINITY) return;
      st.pinned = new Float64Array(st.data.length / 2).fill(Number.NEGATIVE_INFINITY);
    }
    st.pinned[slot] = until;
  }

  /** The instant slot `slot` is pinned until (-Infinity: not pinned). */
  pinnedUntil(st: Slots, slot: number): number {
    return st.pinned === undefined ? Number.NEGATIVE_INFINITY : (st.pinned[slot] as number);
  }

  /** Drops every bucket full at `now` and not pinned; returns how many it dropped. */
  prune(now: number): number {
    this.#lastKey = undefined;
    let dropped = 0;
    for (const [name, st] of this.#stores) {
      const data = st.data;
      for (const [key, slot] of st.index) {
        const p = st.policies[slot] as Policy;
        const full =
          (data[slot * 2] as number) + (now - (data[slot * 2 + 1] as number)) * p.ratePerMs >= p.capacity &&
          (st.pinned === undefined || (st.pinned[slot] as number) <= now);
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

  /** Drops every bucket. */
  clear(): void {
    this.#lastKey = undefined;
    this.#stores.clear();
    this.#last = undefined;
    this.#size = 0;
    this.#sweepAt = MIN_SWEEP_SIZE;
  }
}

const REJECTED_NONE: Decision = Object.freeze({ allowed: false, remaining: -1, retryAfterMs: -1, resetAfterMs: -1 });

/**
 * Rejections hands out rejection Decisions. Over-limit callers hammer one key with the same answer
 * for a millisecond at a time: the same frozen Decision is handed out again while nothing in it
 * changed, so a rejection storm allocates nothing (RateLimiter then reuses its promise too).
 */
export class Rejections {
  #last: Decision = REJECTED_NONE;
  #st: Slots | undefined;
  #slot = -1;

  of(st: Slots, slot: number, remaining: number, retryAfterMs: number, resetAfterMs: number): Decision {
    const last = this.#last;
    if (
      last.retryAfterMs === retryAfterMs &&
      last.resetAfterMs === resetAfterMs &&
      last.remaining === remaining &&
      this.#slot === slot &&
      this.#st === st
    ) {
      return last;
    }
    const d = Object.freeze({ allowed: false, remaining, retryAfterMs, resetAfterMs });
    this.#last = d;
    this.#st = st;
    this.#slot = slot;
    return d;
  }
}
