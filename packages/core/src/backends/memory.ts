import type { Backend } from '../backend.js';
import { type Decision, type Reservation, giveBack, reserve, resetAfter, tryTake, wholeTokens } from '../bucket.js';
import { InvalidOptionsError } from '../errors.js';
import type { Policy } from '../policy.js';
import { describe } from '../policy.js';
import { Rejections, type Slots, SlotStore } from './slot-store.js';

/** MemoryBackendOptions configures a {@link MemoryBackend}. */
export interface MemoryBackendOptions {
  /**
   * The clock, in ms. Inject a fake one in tests to run the buckets on fixed instants.
   * @default performance.now
   */
  clock?: () => number;
}

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
  readonly #slots = new SlotStore();
  readonly #rejections = new Rejections();

  constructor(options: MemoryBackendOptions = {}) {
    this.#clock = checkClock('MemoryBackend', options);
  }

  /** The number of buckets held (full ones not yet swept included). */
  get size(): number {
    return this.#slots.size;
  }

  tryTake(name: string, key: string, policy: Policy, cost: number): Decision {
    const now = this.#clock();
    const slots = this.#slots;
    const slot = slots.locate(name, key);
    const st = slots.found as Slots;
    // Out of line: the steady path stays small enough to be inlined into RateLimiter.tryAcquire.
    if (slot === undefined) return this.#tryNew(st, key, policy, now, cost);
    const wait = slots.take(st, slot, policy, now, cost);
    const tokens = slots.tokens;
    if (wait === 0)
      return {
        allowed: true,
        remaining: wholeTokens(tokens),
        retryAfterMs: 0,
        resetAfterMs: resetAfter(tokens, policy),
      };
    return this.#rejections.of(st, slot, wholeTokens(tokens), wait, resetAfter(tokens, policy));
  }

  /** tryTake on a key with no bucket (a full one), kept if the decision took from it. */
  #tryNew(st: Slots, key: string, policy: Policy, now: number, cost: number): Decision {
    const slots = this.#slots;
    const d = tryTake(slots.lendFull(policy, now), policy, now, cost);
    slots.keep(st, key, policy, false, now);
    return d;
  }

  reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Reservation {
    const now = this.#clock();
    const slots = this.#slots;
    const slot = slots.locate(name, key);
    const st = slots.found as Slots;
    if (slot === undefined) {
      const r = reserve(slots.lendFull(policy, now), policy, now, cost, maxWaitMs);
      slots.keep(st, key, policy, false, now);
      return r;
    }
    const r = reserve(slots.load(st, slot), policy, now, cost, maxWaitMs);
    slots.save(st, slot, policy);
    return r;
  }

  refund(name: string, key: string, policy: Policy, amount: number): void {
    const slots = this.#slots;
    const st = slots.existing(name);
    const slot = st?.index.get(key);
    // A missing bucket is full: there is nothing to give back to.
    if (st === undefined || slot === undefined) return;
    giveBack(slots.load(st, slot), policy, this.#clock(), amount);
    slots.save(st, slot, policy);
  }

  /** prune drops every bucket that has refilled to capacity; returns how many it dropped. */
  prune(): number {
    return this.#slots.prune(this.#clock());
  }

  /** clear drops every bucket. */
  clear(): void {
    this.#slots.clear();
  }
}

const defaultClock = (): number => performance.now();

/** checkClock returns the `clock` option of a backend's options (default performance.now). */
export function checkClock(what: string, options: { clock?: () => number } | undefined): () => number {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError(`invalid ${what} options: must be an object (received ${describe(options)})`);
  }
  const clock = options.clock ?? defaultClock;
  if (typeof clock !== 'function') {
    throw new InvalidOptionsError(
      `invalid ${what} options: clock must be a function returning ms (received ${describe(clock)})`,
      [{ path: 'clock', message: 'must be a function' }],
    );
  }
  return clock;
}
