import type { Cluster, Redis } from 'ioredis';
import type { Backend } from '../backend.js';
import type { Decision, Reservation } from '../bucket.js';
import { InvalidOptionsError } from '../errors.js';
import type { Policy } from '../policy.js';
import { describe } from '../policy.js';
import { MemoryBackend } from './memory.js';
import { RedisBackend, type RedisBackendOptions } from './redis.js';

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
  readonly local: MemoryBackend;
  readonly headroom: number;
  readonly #scaled = new WeakMap<Policy, Policy>();
  #lastPolicy: Policy | undefined;
  #lastScaled: Policy | undefined;
  /**
   * Per name, per key: when Redis last said the bucket would be full (its clock's ms mapped onto
   * ours). Since tokens never come back faster than the policy's rate, this gives the earliest
   * moment Redis could grant a cost; it makes local rejections' retryAfterMs honest.
   */
  readonly #fullAt = new Map<string, Map<string, number>>();
  #fullAtSize = 0;
  #fullAtSweep = 1024;
  readonly #clock: () => number;

  constructor(options: HybridBackendOptions) {
    const { headroom = DEFAULT_HYBRID_HEADROOM, clock, ...redisOptions } = (options ?? {}) as HybridBackendOptions;
    if (typeof headroom !== 'number' || !Number.isFinite(headroom) || headroom < 1) {
      throw new InvalidOptionsError(
        `invalid HybridBackend options: headroom must be a finite number >= 1 (received ${describe(headroom)})`,
        [{ path: 'headroom', message: 'must be a finite number >= 1' }],
      );
    }
    this.redis = new RedisBackend(redisOptions as RedisBackendOptions);
    this.local = new MemoryBackend(clock ? { clock } : {});
    this.headroom = headroom;
    this.#clock = clock ?? (() => performance.now());
  }

  tryTake(name: string, key: string, policy: Policy, cost: number): Decision | Promise<Decision> {
    const redisWait = this.#redisWait(name, key, policy, cost);
    if (redisWait > 0) return rejected(redisWait, policy, this.#redisReset(name, key));
    const pre = this.local.tryTake(name, key, this.#local(policy), cost);
    if (!pre.allowed) {
      // The local bucket is looser than Redis's, so its "no" is certain; remaining is unknown
      // without asking Redis and reported as 0.
      return rejected(pre.retryAfterMs, policy, this.#redisReset(name, key));
    }
    return this.redis.tryTake(name, key, policy, cost).then((d) => {
      this.#learn(name, key, d.resetAfterMs);
      return d;
    });
  }

  async reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Promise<Reservation> {
    // Reservations are taken only by the head of a key's queue (one per process at a time), so
    // they go to Redis directly; the local bucket is charged too, into debt, to stay in step.
    const r = await this.redis.reserve(name, key, policy, cost, maxWaitMs);
    if (r.ok) this.local.reserve(name, key, this.#local(policy), cost, -1);
    this.#learn(name, key, r.resetAfterMs);
    return r;
  }

  async refund(name: string, key: string, policy: Policy, amount: number): Promise<void> {
    this.local.refund(name, key, this.#local(policy), amount);
    this.#fullAt.get(name)?.delete(key);
    await this.redis.refund(name, key, policy, amount);
  }

  /** Ms before Redis could hold `cost` for this key, by its last answer (0: unknown or now). */
  #redisWait(name: string, key: string, policy: Policy, cost: number): number {
    const fullAt = this.#fullAt.get(name)?.get(key);
    if (fullAt === undefined) return 0;
    // fullAt came from a ceil'd resetAfterMs: 1 ms early is the honest bound.
    const wait = Math.ceil(fullAt - 1 - (policy.capacity - cost) / policy.ratePerMs - this.#clock());
    return wait > 0 ? wait : 0;
  }

  #redisReset(name: string, key: string): number {
    const fullAt = this.#fullAt.get(name)?.get(key);
    return fullAt === undefined ? 0 : Math.max(0, Math.ceil(fullAt - this.#clock()));
  }

  #learn(name: string, key: string, resetAfterMs: number): void {
    let m = this.#fullAt.get(name);
    if (m === undefined) {
      m = new Map();
      this.#fullAt.set(name, m);
    }
    if (resetAfterMs <= 0) {
      if (m.delete(key)) this.#fullAtSize--;
      return;
    }
    if (!m.has(key)) {
      if (++this.#fullAtSize > this.#fullAtSweep) this.#sweepFullAt();
    }
    m.set(key, this.#clock() + resetAfterMs);
  }

  /** Drop what Redis told us about buckets that are full by now (they need no memory). */
  #sweepFullAt(): void {
    const now = this.#clock();
    let size = 0;
    for (const m of this.#fullAt.values()) {
      for (const [k, at] of m) if (at <= now) m.delete(k);
      size += m.size;
    }
    this.#fullAtSize = size;
    this.#fullAtSweep = Math.max(1024, size * 2);
  }

  /** For benchmarks and tests: buckets this process holds knowledge of. */
  get size(): number {
    return this.local.size + this.#fullAtSize;
  }

  #local(policy: Policy): Policy {
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

function rejected(retryAfterMs: number, policy: Policy, resetAfterMs: number): Decision {
  return { allowed: false, remaining: 0, retryAfterMs, resetAfterMs: Math.max(resetAfterMs, Math.ceil(1 / policy.ratePerMs)) };
}
