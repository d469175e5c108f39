/**
 * GuardedPools is how a SharedLimiter reaches its pools: through a circuit breaker per shard
 * (src/breaker.ts, as RateLimiter's: one per Redis Cluster master, a pool's state living in one
 * slot), and by the failure policy while a shard is down or failing.
 */
import type { Backend, MaybePromise } from '../backend.js';
import { type Breaker, Breakers, unavailable } from '../breaker.js';
import { FailureReport } from '../failure-report.js';
import type { Policy } from '../policy.js';
import type { Answered } from './fair-queue.js';
import { MemoryPools } from './memory-pools.js';
import { GRANTED, type Observation, type PoolAnswer } from './pool-math.js';
import { type Pools, poolsOf } from './pools.js';
import type { SharedBackendErrorPolicy } from './options.js';

/** A grant by `fail-open`: nothing taken, nothing to give back. */
const OPEN: PoolAnswer = Object.freeze({ status: GRANTED, ms: 0, remaining: 0, resetAfterMs: 0 });
const OPEN_POOLS: Pools = {
  kind: 'fail-open',
  decide: () => OPEN,
  refund: () => undefined,
  observe: () => undefined,
  confirm: () => 0,
};

export class GuardedPools {
  /** The backend's pools (an {@link Answered} from elsewhere was decided by the failure policy). */
  readonly primary: Pools;
  /** Whether the pools answer synchronously (memory): they never fail, no breaker is consulted. */
  readonly sync: boolean;
  readonly #name: string;
  readonly #backend: Backend;
  readonly #policy: SharedBackendErrorPolicy;
  readonly #report: FailureReport;
  readonly #breakers: Breakers;
  readonly #breaker: Breaker;
  readonly #shardOf: ((name: string, pool: string) => string | undefined) | undefined;
  #fallback: MemoryPools | undefined;

  constructor(
    name: string,
    backend: Backend,
    onBackendError: SharedBackendErrorPolicy,
    probeIntervalMs: number,
    onError: ((e: unknown) => void) | undefined,
  ) {
    this.#name = name;
    this.#backend = backend;
    this.#policy = onBackendError;
    this.#report = new FailureReport(
      `SharedLimiter ${JSON.stringify(name)}`,
      backend.kind,
      onBackendError,
      probeIntervalMs,
      onError,
    );
    this.primary = poolsOf(backend);
    this.sync = this.primary instanceof MemoryPools;
    this.#breakers = new Breakers(probeIntervalMs);
    this.#breaker = this.#breakers.of(undefined);
    const p = this.primary;
    this.#shardOf = typeof p.shardOf === 'function' ? p.shardOf.bind(p) : undefined;
  }

  /** One decision on `pool`: by the backend, or by the failure policy while its shard is down. */
  ask(
    pool: string,
    key: string,
    policy: Policy,
    cost: number,
    weight: number,
    mode: 't' | 'r',
    maxWait: number,
    more: boolean,
  ): MaybePromise<Answered> {
    const pools = this.primary;
    if (this.sync)
      return {
        a: pools.decide(this.#name, pool, key, policy, cost, weight, mode, maxWait, more) as PoolAnswer,
        on: pools,
      };
    const breaker = this.#breakerOf(pool);
    if (!breaker.allow())
      return this.#degraded(pool, key, policy, cost, weight, mode, maxWait, more, breaker, undefined);
    const epoch = breaker.epoch;
    let r: MaybePromise<PoolAnswer>;
    try {
      r = pools.decide(this.#name, pool, key, policy, cost, weight, mode, maxWait, more);
    } catch (e) {
      this.#failed(breaker, e, epoch);
      return this.#degraded(pool, key, policy, cost, weight, mode, maxWait, more, breaker, e);
    }
    if (!(r instanceof Promise)) return { a: r, on: pools };
    return r.then(
      (a) => {
        breaker.up();
        return { a, on: pools };
      },
      (e: unknown) => {
        this.#failed(breaker, e, epoch);
        return this.#degraded(pool, key, policy, cost, weight, mode, maxWait, more, breaker, e);
      },
    );
  }

  /** Gives `amount` back to `pool` where calls on it are decided now. Never rejects. */
  refund(pool: string, key: string, policy: Policy, amount: number): Promise<void> | undefined {
    const on = this.sync || this.#breakerOf(pool).allow() ? this.primary : this.#degradedPools();
    return this.giveBack(on, pool, key, policy, amount);
  }

  /** Gives `amount` back to the pools `on` that granted it. Undefined when done synchronously; never rejects. */
  giveBack(on: Pools, pool: string, key: string, policy: Policy, amount: number): Promise<void> | undefined {
    const breaker = on === this.primary ? this.#breakerOf(pool) : undefined;
    const epoch = breaker?.epoch ?? 0;
    let r: MaybePromise<void>;
    try {
      r = on.refund(this.#name, pool, key, policy, amount);
    } catch (e) {
      this.#refundFailed(breaker, e, epoch, pool, key, policy, amount);
      return undefined;
    }
    if (r instanceof Promise)
      return r.then(undefined, (e: unknown) => this.#refundFailed(breaker, e, epoch, pool, key, policy, amount));
    return undefined;
  }

  /**
   * Confirms a grant of `on` that waited for a future start: 0 to start now, else ms until the
   * provider's pause ends. Never rejects: when the backend fails or its breaker is open the
   * answer is 0 (the grant was made and its tokens taken; it starts, as it would unconfirmed).
   */
  confirm(on: Pools, pool: string, policy: Policy): MaybePromise<number> {
    if (on !== this.primary || this.sync) return on.confirm(this.#name, pool, policy);
    const breaker = this.#breakerOf(pool);
    if (!breaker.allow()) return 0;
    const epoch = breaker.epoch;
    let r: MaybePromise<number>;
    try {
      r = on.confirm(this.#name, pool, policy);
    } catch (e) {
      this.#failed(breaker, e, epoch);
      return 0;
    }
    if (!(r instanceof Promise)) return r;
    return r.then(
      (ms) => {
        breaker.up();
        return ms;
      },
      (e: unknown) => {
        this.#failed(breaker, e, epoch);
        return 0;
      },
    );
  }

  /** Applies what the provider said to `pool`, here and on the backend. Never rejects. */
  observe(pool: string, policy: Policy, o: Observation): Promise<void> {
    this.#fallback?.observe(this.#name, pool, policy, o);
    const breaker = this.#breakerOf(pool);
    if (!this.sync && !breaker.allow()) return Promise.resolve();
    const epoch = breaker.epoch;
    try {
      const r = this.primary.observe(this.#name, pool, policy, o);
      if (r instanceof Promise)
        return r.then(
          () => breaker.up(),
          (e: unknown) => this.#failed(breaker, e, epoch),
        );
    } catch (e) {
      this.#failed(breaker, e, epoch);
    }
    return Promise.resolve();
  }

  /** Hands an error of observe's own (not the backend's) to `onError`, if given. */
  report(error: unknown): void {
    this.#report.toHook(error);
  }

  #breakerOf(pool: string): Breaker {
    return this.#shardOf === undefined ? this.#breaker : this.#breakers.of(this.#shardOf(this.#name, pool));
  }

  #failed(breaker: Breaker, error: unknown, epoch: number): void {
    breaker.down(error, epoch);
    this.#report.failed(error);
  }

  #degraded(
    pool: string,
    key: string,
    policy: Policy,
    cost: number,
    weight: number,
    mode: 't' | 'r',
    maxWait: number,
    more: boolean,
    breaker: Breaker,
    error: unknown,
  ): Answered {
    switch (this.#policy) {
      case 'fail-open':
        return { a: OPEN, on: OPEN_POOLS };
      case 'fail-closed':
        throw unavailable(this.#backend.kind, breaker, error);
      default: {
        const fb = this.#fallbackPools();
        return { a: fb.decide(this.#name, pool, key, policy, cost, weight, mode, maxWait, more), on: fb };
      }
    }
  }

  #degradedPools(): Pools {
    return this.#policy === 'fallback' ? this.#fallbackPools() : OPEN_POOLS;
  }

  #fallbackPools(): MemoryPools {
    this.#fallback ??= new MemoryPools();
    return this.#fallback;
  }

  #refundFailed(
    breaker: Breaker | undefined,
    e: unknown,
    epoch: number,
    pool: string,
    key: string,
    policy: Policy,
    amount: number,
  ): void {
    if (breaker !== undefined) this.#failed(breaker, e, epoch);
    if (this.#policy === 'fallback') this.#fallbackPools().refund(this.#name, pool, key, policy, amount);
  }
}
