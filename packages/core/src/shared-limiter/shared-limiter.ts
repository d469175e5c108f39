import type { Backend, MaybePromise } from '../backend.js';
import { checkAmount, checkCost, checkKey, checkMaxWait, checkSignal, checkWeight } from '../args.js';
import type { Decision } from '../bucket.js';
import { AbortedError, CostExceedsCapacityError, MaxWaitExceededError } from '../errors.js';
import { LimiterMetrics } from '../metrics.js';
import { type Policy, type PolicyInput, normalizePolicy } from '../policy.js';
import { type Answered, FairQueues, type SharedGrant, type Waiter, queueId } from './fair-queue.js';
import { GuardedPools } from './guarded-pools.js';
import type { MemoryPools } from './memory-pools.js';
import { GRANTED, type Observation } from './pool-math.js';
import {
  DEFAULT_SHARED_OPTIONS,
  type PoolObservation,
  type SharedAcquireOptions,
  type SharedBackendErrorPolicy,
  type SharedLimiterOptions,
  type SharedRefundOptions,
  type SharedTryAcquireOptions,
  parseSharedOptions,
} from './options.js';

const UNLIMITED: Decision = Object.freeze({
  allowed: true,
  remaining: Number.POSITIVE_INFINITY,
  retryAfterMs: 0,
  resetAfterMs: 0,
});
const NOT_SAID = -1;

/**
 * SharedLimiter keeps many keys (users, tenants) under one budget per pool (e.g. the provider's
 * requests or LLM tokens per minute for one model), and divides it by weight when they contend.
 *
 * - Uncontended, a call is admitted at once, one backend round trip, as on one bucket.
 * - Contended, the pool's refill goes to the keys with callers waiting, in proportion to their
 *   weights, whichever processes the callers are in; a key alone gets the whole rate.
 * - The pool never admits more than capacity + rate × T in any window T, across processes.
 *
 * How (the design). State lives in two places:
 * - In each process, a FIFO queue per (pool, key); only its head holds a turn in the pool, so
 *   callers of a key are served in arrival order, and a key's backlog (500 queued calls) is one
 *   head to the pool, not 500.
 * - In the pool (a Map here, one Redis hash per pool, in one Cluster slot): the token bucket,
 *   the waiting keys with their virtual counters (tokens granted ÷ weight, Sheng et al.'s
 *   virtual token counter, OSDI '24), and the pool's virtual time (the least waiting counter).
 * A head asks the pool; the pool lifts a key that (re)appears to the least-served waiting key's
 * counter (idle time earns no credit, and no key starts behind), then computes what the waiting
 * keys with lower counters are owed to come level: Σ weight_j × (counter_k − counter_j). Owing
 * nothing (or the bucket holds it all and this cost too), the head is granted: its cost is taken
 * from the bucket, into debt if need be, and it starts when the debt is repaid (one round trip;
 * a grant that waited CONFIRM_MIN_MS or more asks the pool once more at its start whether a
 * pause holds it, taking nothing: a second round trip).
 * Else it is told when to ask again: when the bucket will have refilled what is owed, or when
 * the last of those keys stops waiting, whichever is first (nothing taken; a second round trip).
 * A key leaves the waiting set SHARE_GRACE_MS after its last grant when its head said more
 * callers wait behind it, or at its grant's start when none do: timers computed from the pool's
 * answers, no polling.
 *
 * Why it is fair across processes: the counter belongs to the key in the pool, not to a
 * process, so a key's heads in three processes advance one counter, and each is granted only
 * when that counter is not ahead of another waiting key's; all grants are charged to one bucket.
 * Bound: a backlogged key's counter is never more than one of its costs ÷ its weight ahead of
 * the least waiting counter when granted, so two backlogged keys' service (÷ weight) differs by
 * at most max cost ÷ weight of each, plus what one grant per process may hold in flight.
 *
 * `observe` steers a pool in every process: `retryAfterMs` starts nothing before it (grants
 * already held wait too: this process's at once, other processes' when they confirm at their
 * start; a confirmation that fails admits, as the grant was made; they and the grants made
 * during the pause start at its end within the capacity), a lower `remaining` empties
 * the bucket down to it, a lower `limit` replaces the rate (capacity scaled alike) for
 * max(per, resetAfterMs).
 *
 * Safe for concurrent use; share one limiter per budget.
 *
 * @example
 * const org = new SharedLimiter({ backend, name: 'openai-requests', policy: { rate: 10_000, per: '1m' },
 *   weight: (tenant) => (tenant.startsWith('pro:') ? 4 : 1) })
 * await org.acquire('pro:acme', { pool: 'gpt-4o' })  // waits for acme's fair share of gpt-4o's budget
 */
export class SharedLimiter {
  readonly backend: Backend;
  readonly name: string;
  readonly onBackendError: SharedBackendErrorPolicy;
  readonly #pools: GuardedPools;
  readonly #static: Policy | undefined;
  readonly #policyFn: ((pool: string) => PolicyInput | undefined) | undefined;
  readonly #policies = new WeakMap<object, Policy>();
  readonly #weight: ((key: string) => number) | undefined;
  readonly #queues: FairQueues;
  readonly #metrics: LimiterMetrics;

  constructor(options: SharedLimiterOptions) {
    const o = parseSharedOptions(options);
    this.backend = o.backend;
    this.name = o.name;
    this.onBackendError = o.onBackendError;
    this.#weight = o.weight;
    if (typeof o.policy === 'function') this.#policyFn = o.policy as (pool: string) => PolicyInput | undefined;
    else this.#static = normalizePolicy(o.policy, 'policy');
    this.#pools = new GuardedPools(o.name, o.backend, o.onBackendError, o.probeIntervalMs, o.onError);
    this.#metrics = new LimiterMetrics(o.name, o.backend.kind);
    const pools = this.#pools;
    this.#queues = new FairQueues(
      {
        ask: (w, maxWait, more) => pools.ask(w.pool, w.key, w.policy, w.cost, w.weight, 'r', maxWait, more),
        giveBack: (on, w) => pools.giveBack(on, w.pool, w.key, w.policy, w.cost),
        confirm: (on, w) => pools.confirm(on, w.pool, w.policy),
        degraded: (on) => on !== pools.primary,
      },
      this.#metrics,
    );
  }

  /** policyFor returns `pool`'s validated policy, or undefined when it has no limit. */
  policyFor(pool: string): Policy | undefined {
    if (this.#static !== undefined) return this.#static;
    const input = (this.#policyFn as (pool: string) => PolicyInput | undefined)(pool);
    if (input === undefined) return undefined;
    if (typeof input === 'object' && input !== null) {
      const cached = this.#policies.get(input);
      if (cached !== undefined) return cached;
      const p = normalizePolicy(
        input,
        `policy(${JSON.stringify(pool.length > 40 ? `${pool.slice(0, 37)}...` : pool)})`,
      );
      this.#policies.set(input, p);
      return p;
    }
    return normalizePolicy(input, 'policy(pool)');
  }

  #weightOf(key: string): number {
    return this.#weight === undefined ? 1 : checkWeight(this.#weight(key), key);
  }

  /**
   * acquire waits until it is `key`'s turn in `pool` and the pool grants `cost` tokens, then
   * resolves with how long it waited. Callers of one key are served in arrival order.
   *
   * Rejects at once with CostExceedsCapacityError (cost above the pool's capacity),
   * MaxWaitExceededError (it would wait more than `maxWaitMs`; nothing taken, `retryAfterMs`
   * estimated), InvalidArgumentError or InvalidOptionsError (a bad weight); with AbortedError
   * when `signal` fires (its tokens go back and the key's next caller moves up at once).
   */
  acquire(key: string, options?: SharedAcquireOptions): Promise<SharedGrant> {
    let cost: number;
    let pool: string;
    let policy: Policy | undefined;
    let maxWaitMs: number;
    let signal: AbortSignal | undefined;
    let weight: number;
    try {
      checkKey(key);
      cost = checkCost(options?.cost);
      pool = options?.pool ?? DEFAULT_SHARED_OPTIONS.pool;
      checkKey(pool, 'pool');
      maxWaitMs = checkMaxWait(options?.maxWaitMs);
      signal = checkSignal(options?.signal);
      policy = this.#static ?? this.policyFor(pool);
      if (policy === undefined) {
        this.#metrics.granted('allowed', 0);
        return Promise.resolve({ waitedMs: 0, remaining: Number.POSITIVE_INFINITY });
      }
      if (cost > policy.capacity) {
        this.#metrics.decision('rejected');
        throw new CostExceedsCapacityError(key, cost, policy.capacity);
      }
      weight = this.#weightOf(key);
      if (signal?.aborted) {
        this.#metrics.decision('aborted');
        throw new AbortedError(key, signal.reason);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    const queued = this.#queues.size !== 0 && this.#queues.has(queueId(pool, key));
    const pools = this.#pools;
    if (pools.sync && !queued) {
      // Fast path: nobody of this key waits here and the pool answers at once.
      const memory = pools.primary as MemoryPools;
      const a = memory.decide(
        this.name,
        pool,
        key,
        policy,
        cost,
        weight,
        'r',
        maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs,
        false,
      );
      if (a.status === GRANTED && a.ms <= 0) {
        this.#metrics.grantedAtOnce();
        return Promise.resolve({ waitedMs: 0, remaining: a.remaining });
      }
      return this.#wait(pool, key, policy, cost, weight, maxWaitMs, signal, { a, on: memory });
    }
    return this.#wait(pool, key, policy, cost, weight, maxWaitMs, signal, queued ? undefined : null);
  }

  /** Queue a caller; `first`: its turn already answered (or null: ask now as the head; undefined: queue). */
  #wait(
    pool: string,
    key: string,
    policy: Policy,
    cost: number,
    weight: number,
    maxWaitMs: number,
    signal: AbortSignal | undefined,
    first: Answered | null | undefined,
  ): Promise<SharedGrant> {
    return new Promise<SharedGrant>((resolve, reject) => {
      const start = performance.now();
      const w: Waiter = {
        pool,
        key,
        cost,
        policy,
        weight,
        start,
        deadline: start + maxWaitMs,
        resolve,
        reject,
        signal,
        state: 'queued',
        heldOn: undefined,
        remaining: 0,
        admitAt: 0,
        confirm: false,
        timer: undefined,
        onAbort: undefined,
      };
      if (first !== undefined && first !== null) {
        this.#queues.enqueue(w, first);
        return;
      }
      if (first === null) {
        // No caller of this key waits here: this one is the head; ask at once.
        let r: MaybePromise<Answered>;
        try {
          r = this.#pools.ask(
            pool,
            key,
            policy,
            cost,
            weight,
            'r',
            maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs,
            false,
          );
        } catch (e) {
          this.#metrics.decision('rejected');
          reject(e);
          return;
        }
        this.#queues.enqueue(w, r);
        return;
      }
      if (maxWaitMs !== Number.POSITIVE_INFINITY) {
        const est = this.#queues.estimate(queueId(pool, key), cost, policy);
        if (est > maxWaitMs) {
          this.#metrics.decision('timeout');
          reject(new MaxWaitExceededError(key, est, maxWaitMs));
          return;
        }
      }
      this.#queues.enqueue(w);
    });
  }

  /**
   * tryAcquire takes `cost` tokens from `pool` now if `key` may start now; otherwise it takes
   * nothing and says, in `retryAfterMs`, when it might. It never waits and never jumps waiters:
   * not those of its key in this process, nor keys owed a turn in the pool.
   */
  tryAcquire(key: string, options?: SharedTryAcquireOptions): Promise<Decision> {
    try {
      checkKey(key);
      const cost = checkCost(options?.cost);
      const pool = options?.pool ?? DEFAULT_SHARED_OPTIONS.pool;
      checkKey(pool, 'pool');
      const policy = this.#static ?? this.policyFor(pool);
      const metrics = this.#metrics;
      if (policy === undefined) {
        metrics.decision('allowed');
        return Promise.resolve(UNLIMITED);
      }
      if (cost > policy.capacity) {
        metrics.decision('rejected');
        throw new CostExceedsCapacityError(key, cost, policy.capacity);
      }
      const weight = this.#weightOf(key);
      const id = queueId(pool, key);
      if (this.#queues.has(id)) {
        metrics.decision('rejected');
        const est = this.#queues.estimate(id, cost, policy);
        return Promise.resolve({
          allowed: false,
          remaining: 0,
          retryAfterMs: Math.max(1, est),
          resetAfterMs: Math.max(1, est),
        });
      }
      let r: MaybePromise<Answered>;
      try {
        r = this.#pools.ask(pool, key, policy, cost, weight, 't', -1, false);
      } catch (e) {
        metrics.decision('rejected');
        throw e;
      }
      if (r instanceof Promise) {
        return r.then(
          (x) => this.#tried(x),
          (e: unknown) => {
            metrics.decision('rejected');
            throw e;
          },
        );
      }
      return Promise.resolve(this.#tried(r));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** tryAcquire's answer, counted: `fallback` when the failure policy decided it. */
  #tried(r: Answered): Decision {
    const d = toDecision(r);
    this.#metrics.decision(r.on !== this.#pools.primary ? 'fallback' : d.allowed ? 'allowed' : 'rejected');
    return d;
  }

  /**
   * refund gives `amount` tokens back to `pool` (capped at capacity) and takes them off `key`'s
   * share: a call that did not happen, or LLM tokens estimated above what was used.
   */
  refund(key: string, amount: number, options?: SharedRefundOptions): Promise<void> {
    try {
      checkKey(key);
      checkAmount(amount);
      const pool = options?.pool ?? DEFAULT_SHARED_OPTIONS.pool;
      checkKey(pool, 'pool');
      const policy = this.#static ?? this.policyFor(pool);
      if (amount === 0 || policy === undefined) return Promise.resolve();
      return this.#pools.refund(pool, key, policy, amount) ?? Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * observe passes on what the provider said about `pool` (from its rate-limit headers or a
   * 429), in every process sharing the backend: after `retryAfterMs` nothing starts until then;
   * a `remaining` lower than the pool holds empties it down to that; a `limit` lower than the
   * policy's rate replaces it (capacity scaled alike) for max(per, resetAfterMs), and one at or
   * above it lifts that. Never rejects; a backend failure goes to `onError`.
   */
  observe(pool: string, said: PoolObservation): Promise<void> {
    try {
      checkKey(pool, 'pool');
      const policy = this.#static ?? this.policyFor(pool);
      if (policy === undefined || typeof said !== 'object' || said === null) return Promise.resolve();
      const o: Observation = {
        limit: num(said.limit),
        remaining: num(said.remaining),
        resetAfterMs: num(said.resetAfterMs),
        retryAfterMs: num(said.retryAfterMs),
      };
      if (o.limit < 0 && o.remaining < 0 && o.retryAfterMs < 0) return Promise.resolve();
      if (o.retryAfterMs > 0) this.#queues.holdUntil(pool, performance.now() + o.retryAfterMs);
      return this.#pools.observe(pool, policy, o);
    } catch (e) {
      this.#pools.report(e);
      return Promise.resolve();
    }
  }

  /** The number of callers of this process waiting on `key` in `pool` (the head included). */
  queued(key: string, pool: string = DEFAULT_SHARED_OPTIONS.pool): number {
    return this.#queues.queued(queueId(pool, key));
  }
}

function toDecision(r: Answered): Decision {
  const a = r.a;
  const allowed = a.status === GRANTED;
  return {
    allowed,
    remaining: a.remaining,
    retryAfterMs: allowed ? 0 : Math.max(1, a.ms),
    resetAfterMs: a.resetAfterMs,
  };
}

function num(v: unknown): number {
  return typeof v === 'number' && v >= 0 && Number.isFinite(v) ? v : NOT_SAID;
}
