import type { Backend, MaybePromise } from '../backend.js';
import { HybridBackend } from '../backends/hybrid.js';
import { MemoryBackend } from '../backends/memory.js';
import type { RedisBackend } from '../backends/redis/backend.js';
import type { Policy } from '../policy.js';
import { MemoryPools } from './memory-pools.js';
import type { Observation, PoolAnswer } from './pool-math.js';
import { RedisPools } from './redis-pools.js';

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
  /**
   * Confirm a grant that waited for a future start, at that start: 0 to start now, else ms until
   * the provider's pause ends (see pool-math's `pauseLeft`). Takes nothing.
   */
  confirm(name: string, pool: string, policy: Policy): MaybePromise<number>;
  /**
   * The shard (a Redis Cluster master, as 'host:port') that holds pool (`name`, `pool`), or
   * undefined when there is one shard. Cheap, never throws (as {@link Backend.shardOf}).
   */
  shardOf?(name: string, pool: string): string | undefined;
}

const memoryPools = new WeakMap<MemoryBackend, MemoryPools>();
const redisPools = new WeakMap<RedisBackend, RedisPools>();

/** poolsOf returns the pools kept on `backend`, one set per backend (limiters on it share them). */
export function poolsOf(backend: Backend): Pools {
  if (backend instanceof MemoryBackend) {
    let p = memoryPools.get(backend);
    if (p === undefined) {
      p = new MemoryPools();
      memoryPools.set(backend, p);
    }
    return p;
  }
  const redis = backend instanceof HybridBackend ? backend.redis : (backend as RedisBackend);
  let p = redisPools.get(redis);
  if (p === undefined) {
    p = new RedisPools(redis.client, redis.prefix, redis.timeoutMs);
    redisPools.set(redis, p);
  }
  return p;
}
