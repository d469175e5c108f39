import type { Policy } from '../policy.js';
import {
  type Observation,
  type PoolAnswer,
  type PoolState,
  decide,
  giveBackPool,
  keepFor,
  newPool,
  observePool,
  pauseLeft,
} from './pool-math.js';
import type { Pools } from './pools.js';

/** Pools are swept when the map has grown this much since the last sweep. */
const MIN_SWEEP_SIZE = 256;

/**
 * MemoryPools keeps pools in a Map in this process: no I/O, decisions answered synchronously.
 * A pool that is full with no key waiting (and no provider word in force) is dropped at once
 * after the call that left it so, or by the next sweep: a missing pool is a full, idle one.
 */
export class MemoryPools implements Pools {
  readonly kind = 'memory';
  readonly #clock: () => number;
  readonly #pools = new Map<string, { state: PoolState; expiresAt: number }>();
  #sweepAt = MIN_SWEEP_SIZE;
  // The last (name, pool) and its id: one limiter calls the same pool over and over.
  #lastName = '';
  #lastPool = '';
  #lastId = '\u0000';

  #id(name: string, pool: string): string {
    if (name !== this.#lastName || pool !== this.#lastPool) {
      this.#lastName = name;
      this.#lastPool = pool;
      this.#lastId = `${name}\u0000${pool}`;
    }
    return this.#lastId;
  }

  constructor(clock: () => number = () => performance.now()) {
    this.#clock = clock;
  }

  /** How many pools are held (for tests: idle pools leave nothing behind). */
  get size(): number {
    return this.#pools.size;
  }

  #load(id: string, policy: Policy, now: number): { state: PoolState; expiresAt: number } {
    let p = this.#pools.get(id);
    if (p === undefined || p.expiresAt <= now) {
      p = { state: newPool(policy, now), expiresAt: Number.POSITIVE_INFINITY };
      this.#pools.set(id, p);
      if (this.#pools.size >= this.#sweepAt) this.#sweep(now);
    }
    return p;
  }

  #store(id: string, p: { state: PoolState; expiresAt: number }, policy: Policy, now: number): void {
    const keep = keepFor(p.state, policy, now);
    if (keep === 0) this.#pools.delete(id);
    else p.expiresAt = now + keep;
  }

  #sweep(now: number): void {
    for (const [id, p] of this.#pools) if (p.expiresAt <= now) this.#pools.delete(id);
    this.#sweepAt = Math.max(MIN_SWEEP_SIZE, this.#pools.size * 2);
  }

  decide(
    name: string,
    pool: string,
    key: string,
    policy: Policy,
    cost: number,
    weight: number,
    mode: 't' | 'r',
    maxWaitMs: number,
    more: boolean,
  ): PoolAnswer {
    const now = this.#clock();
    const id = this.#id(name, pool);
    const p = this.#load(id, policy, now);
    const a = decide(p.state, policy, now, key, cost, weight, mode, maxWaitMs, more);
    this.#store(id, p, policy, now);
    return a;
  }

  refund(name: string, pool: string, key: string, policy: Policy, amount: number): void {
    const now = this.#clock();
    const id = this.#id(name, pool);
    if (!this.#pools.has(id)) return; // a missing pool is full
    const p = this.#load(id, policy, now);
    giveBackPool(p.state, policy, now, key, amount);
    this.#store(id, p, policy, now);
  }

  observe(name: string, pool: string, policy: Policy, o: Observation): void {
    const now = this.#clock();
    const id = this.#id(name, pool);
    const p = this.#load(id, policy, now);
    observePool(p.state, policy, now, o);
    this.#store(id, p, policy, now);
  }

  confirm(name: string, pool: string, _policy: Policy): number {
    const now = this.#clock();
    const p = this.#pools.get(this.#id(name, pool));
    return p === undefined || p.expiresAt <= now ? 0 : pauseLeft(p.state, now);
  }
}
