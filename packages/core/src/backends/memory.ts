import type { Backend } from '../backend.js';
import { type Decision, type Reservation, giveBack, reserve, tryTake } from '../bucket.js';
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

/** One bucket: tokens at `updatedAt`, and the policy that says when it is full again. */
interface Entry {
  tokens: number;
  updatedAt: number;
  policy: Policy;
}

/** Buckets are swept when the map has grown this much since the last sweep. */
const MIN_SWEEP_SIZE = 1024;

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
  readonly #buckets = new Map<string, Map<string, Entry>>();
  #lastName = '';
  #last: Map<string, Entry> | undefined;
  #size = 0;
  #sweepAt = MIN_SWEEP_SIZE;

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
    const map = this.#map(name);
    const entry = map.get(key);
    if (entry === undefined) return this.#insert(name, key, policy, now, (e) => tryTake(e, policy, now, cost));
    entry.policy = policy;
    return tryTake(entry, policy, now, cost);
  }

  reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Reservation {
    const now = this.#clock();
    const map = this.#map(name);
    const entry = map.get(key);
    if (entry === undefined)
      return this.#insert(name, key, policy, now, (e) => reserve(e, policy, now, cost, maxWaitMs));
    entry.policy = policy;
    return reserve(entry, policy, now, cost, maxWaitMs);
  }

  refund(name: string, key: string, policy: Policy, amount: number): void {
    const entry = this.#map(name).get(key);
    // A missing bucket is full: there is nothing to give back to.
    if (entry === undefined) return;
    entry.policy = policy;
    giveBack(entry, policy, this.#clock(), amount);
  }

  /** prune drops every bucket that has refilled to capacity; returns how many it dropped. */
  prune(): number {
    const now = this.#clock();
    let dropped = 0;
    for (const [name, map] of this.#buckets) {
      for (const [key, e] of map) {
        const full = e.tokens + (now - e.updatedAt) * e.policy.ratePerMs >= e.policy.capacity;
        if (full) {
          map.delete(key);
          dropped++;
        }
      }
      if (map.size === 0) {
        this.#buckets.delete(name);
        if (this.#last === map) this.#last = undefined;
      }
    }
    this.#size -= dropped;
    this.#sweepAt = Math.max(MIN_SWEEP_SIZE, this.#size * 2);
    return dropped;
  }

  /** clear drops every bucket. */
  clear(): void {
    this.#buckets.clear();
    this.#last = undefined;
    this.#size = 0;
    this.#sweepAt = MIN_SWEEP_SIZE;
  }

  #map(name: string): Map<string, Entry> {
    if (name === this.#lastName && this.#last !== undefined) return this.#last;
    let map = this.#buckets.get(name);
    if (map === undefined) {
      map = new Map();
      this.#buckets.set(name, map);
    }
    this.#lastName = name;
    this.#last = map;
    return map;
  }

  #insert<T>(
    name: string,
    key: string,
    policy: Policy,
    now: number,
    decide: (e: Entry) => T,
  ): T {
    const entry: Entry = { tokens: policy.capacity, updatedAt: now, policy };
    const result = decide(entry);
    // A bucket still full after the decision (a rejection cannot happen on a full bucket unless
    // cost > capacity, which the limiter refuses) need not be stored.
    if (entry.tokens < policy.capacity) {
      if (this.#size >= this.#sweepAt) this.prune();
      this.#map(name).set(key, entry);
      this.#size++;
    }
    return result;
  }
}

const defaultClock = (): number => performance.now();
