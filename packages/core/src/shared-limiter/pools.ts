import type { MaybePromise } from '../backend.js';
import type { Policy } from '../policy.js';
import type { Observation, PoolAnswer } from './pool-math.js';

/**
 * Pools is where a SharedLimiter's pools live: in this process ({@link MemoryPools}) or in
 * Redis ({@link RedisPools}). Each operation is one atomic step on one pool (one round trip).
 * `name` keeps apart the pools of different limiters; `pool` and `key` are any strings.
 */
export interface Pools {
  readonly kind: string;
  /** One decision (see pool-math's `decide`). */
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
  ): MaybePromise<PoolAnswer>;
  /** Give `amount` tokens back to the pool and off `key`'s counter. */
  refund(name: string, pool: string, key: string, policy: Policy, amount: number): MaybePromise<void>;
  /** Apply what the provider said. */
  observe(name: string, pool: string, policy: Policy, o: Observation): MaybePromise<void>;
}
