/**
 * The hybrid's local pre-check: a bucket per key in this process, `headroom` × the policy, and
 * what Redis last said about the key (when its bucket would be full again), in one slot. What it
 * rejects never reaches Redis.
 */
import { type Decision, giveBack, reserve, tryTake } from '../bucket.js';
import type { Policy } from '../policy.js';
import { Rejections, type Slots, SlotStore } from './slot-store.js';

export class LocalPrecheck {
  readonly #clock: () => number;
  readonly #slots = new SlotStore();
  readonly #rejections = new Rejections();

  constructor(clock: () => number) {
    this.#clock = clock;
  }

  /** Local buckets held (with what Redis said of each). */
  get size(): number {
    return this.#slots.size;
  }

  /**
   * check, with one clock read and one lookup, rejects (with an honest retryAfterMs) when Redis's
   * last answer says the cost cannot be there yet or the local bucket (`local`, the policy with
   * headroom) lacks it; otherwise it charges the local bucket and returns undefined: ask Redis.
   */
  check(name: string, key: string, local: Policy, policy: Policy, cost: number): Decision | undefined {
    const now = this.#clock();
    const slots = this.#slots;
    const slot = slots.locate(name, key);
    const st = slots.found as Slots;
    if (slot === undefined) {
      // Nothing learnt from Redis for this key, and a full local bucket.
      const d = tryTake(slots.lendFull(local, now), local, now, cost);
      slots.keep(st, key, local, false, now);
      if (d.allowed) return undefined;
      return {
        allowed: false,
        remaining: 0,
        retryAfterMs: d.retryAfterMs,
        resetAfterMs: resetAfterRedis(policy, Number.NEGATIVE_INFINITY, now),
      };
    }
    const fullAt = slots.pinnedUntil(st, slot);
    // fullAt came from a ceil'd resetAfterMs: 1 ms early is the honest bound. Tokens never come
    // back faster than the policy's rate, so Redis cannot hold `cost` before this.
    const redisWait = Math.ceil(fullAt - 1 - (policy.capacity - cost) / policy.ratePerMs - now);
    if (redisWait > 0) return this.#rejections.of(st, slot, 0, redisWait, resetAfterRedis(policy, fullAt, now));
    const wait = slots.take(st, slot, local, now, cost);
    // The local bucket is looser than Redis's, so its "no" is certain.
    return wait === 0 ? undefined : this.#rejections.of(st, slot, 0, wait, resetAfterRedis(policy, fullAt, now));
  }

  /**
   * learn records that Redis's bucket for `key` is full `resetAfterMs` from now (forgets it when
   * <= 0). A slot holding such knowledge is kept until that moment passes.
   */
  learn(name: string, key: string, local: Policy, resetAfterMs: number): void {
    const slots = this.#slots;
    const st = slots.slotsOf(name);
    let slot = st.index.get(key);
    if (resetAfterMs <= 0) {
      if (slot !== undefined) slots.pin(st, slot, Number.NEGATIVE_INFINITY);
      return;
    }
    const now = this.#clock();
    if (slot === undefined) {
      slots.lendFull(local, now);
      slot = slots.keep(st, key, local, true, now) as number;
    }
    slots.pin(st, slot, now + resetAfterMs);
  }

  /** charge takes `cost` from the local bucket into debt (a reservation Redis granted). */
  charge(name: string, key: string, local: Policy, cost: number): void {
    const now = this.#clock();
    const slots = this.#slots;
    const slot = slots.locate(name, key);
    const st = slots.found as Slots;
    if (slot === undefined) {
      reserve(slots.lendFull(local, now), local, now, cost, -1);
      slots.keep(st, key, local, false, now);
      return;
    }
    reserve(slots.load(st, slot), local, now, cost, -1);
    slots.save(st, slot, local);
  }

  /** refund gives `amount` back to the local bucket and forgets what Redis said of the key. */
  refund(name: string, key: string, local: Policy, amount: number): void {
    const slots = this.#slots;
    const st = slots.existing(name);
    const slot = st?.index.get(key);
    if (st === undefined || slot === undefined) return;
    giveBack(slots.load(st, slot), local, this.#clock(), amount);
    slots.save(st, slot, local);
    slots.pin(st, slot, Number.NEGATIVE_INFINITY);
  }

  /** prune drops every local bucket that is full and holds nothing Redis said; returns how many. */
  prune(): number {
    return this.#slots.prune(this.#clock());
  }
}

/** resetAfterMs of a pre-check rejection; Redis's bucket is full at `fullAt` (-Infinity: unknown). */
function resetAfterRedis(policy: Policy, fullAt: number, now: number): number {
  const reset = Math.ceil(fullAt - now);
  const floor = Math.ceil(1 / policy.ratePerMs);
  return reset > floor ? reset : floor;
}
