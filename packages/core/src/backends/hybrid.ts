import type { Cluster, Redis } from 'ioredis';
import type { Backend } from '../backend.js';
import type { Decision, Reservation } from '../bucket.js';
import { InvalidOptionsError } from '../errors.js';
import type { Policy } from '../policy.js';
import { describe } from '../policy.js';
import { LocalPrecheck } from './hybrid-local.js';
import { checkClock } from './memory.js';
import { RedisBackend, type RedisBackendOptions } from './redis/backend.js';

/** HybridBackendOptions configures a {@link HybridBackend}. */
export interface HybridBackendOptions {
  /** An ioredis client: a `Redis` or a `Cluster`. Redis holds the authoritative buckets. */
  client: Redis | Cluster;
  /** @default 'tollgate:' */
  prefix?: string;
  /** @default 1000 */
  timeoutMs?: number;
  /**
   * How much larger than the policy the local pre-check bucket is (rate and capacity alike).
   * Must be ≥ 1: below 1 the local bucket would reject calls Redis admits.
   * @default 1.2
   */
  headroom?: number;
  /** The local buckets' clock, in ms (tests). @default performance.now */
  clock?: () => number;
}

/** DEFAULT_HYBRID_HEADROOM is the default {@link HybridBackendOptions.headroom}. */
export const DEFAULT_HYBRID_HEADROOM = 1.2;

/**
 * HybridBackend puts a local bucket per key, `headroom` × the policy (default 1.2×), in front of
 * Redis. Every call first takes from the local bucket: what it rejects is answered at once with no
 * I/O; what it passes is decided by Redis, exactly as {@link RedisBackend} would. So it never
 * admits more than the Redis strategy alone, and a process bursting far over its quota costs
 * Redis about `headroom × capacity` calls per burst instead of one per call.
 *
 * The local bucket is charged for every call it passes, admitted by Redis or not: its job is to
 * bound how often this process asks Redis. A rejection it answers carries its own (shorter)
 * `retryAfterMs`, an estimate.
 */
export class HybridBackend implements Backend {
  readonly kind = 'hybrid';
  readonly redis: RedisBackend;
  readonly headroom: number;
  readonly #local: LocalPrecheck;
  readonly #scaled = new WeakMap<Policy, Policy>();
  #lastPolicy: Policy | undefined;
  #lastScaled: Policy | undefined;

  constructor(options: HybridBackendOptions) {
    const { headroom = DEFAULT_HYBRID_HEADROOM, clock, ...redisOptions } = (options ?? {}) as HybridBackendOptions;
    if (typeof headroom !== 'number' || !Number.isFinite(headroom) || headroom < 1) {
      throw new InvalidOptionsError(
        `invalid HybridBackend options: headroom must be a finite number >= 1 (received ${describe(headroom)})`,
        [{ path: 'headroom', message: 'must be a finite number >= 1' }],
      );
    }
    this.redis = new RedisBackend(redisOptions as RedisBackendOptions);
    this.#local = new LocalPrecheck(checkClock('HybridBackend', clock === undefined ? {} : { clock }));
    this.headroom = headroom;
  }

  tryTake(name: string, key: string, policy: Policy, cost: number): Decision | Promise<Decision> {
    // One clock read and one lookup: the local bucket's slot also holds when Redis last said the
    // key's bucket would be full, which makes local rejections' retryAfterMs honest.
    const local = this.#scale(policy);
    const no = this.#local.check(name, key, local, policy, cost);
    if (no !== undefined) return no;
    return this.#ask(name, key, policy, local, cost);
  }

  /** Passed the local pre-check: Redis decides. (Its own method: the closure would cost every call a context.) */
  #ask(name: string, key: string, policy: Policy, local: Policy, cost: number): Promise<Decision> {
    return this.redis.tryTake(name, key, policy, cost).then((d) => {
      this.#local.learn(name, key, local, d.resetAfterMs);
      return d;
    });
  }

  async reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Promise<Reservation> {
    // Reservations are taken only by the head of a key's queue (one per process at a time), so
    // they go to Redis directly; the local bucket is charged too, into debt, to stay in step.
    const r = await this.redis.reserve(name, key, policy, cost, maxWaitMs);
    const local = this.#scale(policy);
    if (r.ok) this.#local.charge(name, key, local, cost);
    this.#local.learn(name, key, local, r.resetAfterMs);
    return r;
  }

  async refund(name: string, key: string, policy: Policy, amount: number): Promise<void> {
    this.#local.refund(name, key, this.#scale(policy), amount);
    await this.redis.refund(name, key, policy, amount);
  }

  /**
   * shardOf is the Redis Cluster node that owns the key (see {@link RedisBackend.shardOf}): the
   * local pre-check cannot fail, so the hybrid's shards are Redis's.
   */
  shardOf(name: string, key: string): string | undefined {
    return this.redis.shardOf(name, key);
  }

  /** The local buckets this process holds (each with what Redis said of its key, in one slot). */
  get size(): number {
    return this.#local.size;
  }

  /** prune drops the local buckets that are full and hold nothing Redis said; returns how many. */
  prune(): number {
    return this.#local.prune();
  }

  /** The local pre-check's policy: `headroom` × `policy`. */
  #scale(policy: Policy): Policy {
    // One limiter calls with the same policy object over and over: skip the WeakMap then.
    if (policy === this.#lastPolicy) return this.#lastScaled as Policy;
    let p = this.#scaled.get(policy);
    if (p === undefined) {
      const h = this.headroom;
      p = Object.freeze({
        rate: policy.rate * h,
        perMs: policy.perMs,
        capacity: policy.capacity * h,
        ratePerMs: policy.ratePerMs * h,
      });
      this.#scaled.set(policy, p);
    }
    this.#lastPolicy = policy;
    this.#lastScaled = p;
    return p;
  }
}
