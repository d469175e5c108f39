import { z } from 'zod';
import type { Backend, MaybePromise } from '../backend.js';
import { HybridBackend } from '../backends/hybrid.js';
import { MemoryBackend } from '../backends/memory.js';
import { RedisBackend } from '../backends/redis/backend.js';
import type { Decision } from '../bucket.js';
import {
  AbortedError,
  BackendUnavailableError,
  CostExceedsCapacityError,
  InvalidOptionsError,
  MaxWaitExceededError,
} from '../errors.js';
import { type Policy, type PolicyInput, describe, normalizePolicy, toOptionsError } from '../policy.js';
import { checkAmount, checkCost, checkKey, checkMaxWait, checkSignal, checkWeight } from './args.js';
import { Breaker } from './breaker.js';
import { type Answered, FairQueues, type SharedGrant, type Waiter, queueId } from './fair-queue.js';
import { MemoryPools } from './memory-pools.js';
import { GRANTED, type Observation, type PoolAnswer } from './pool-math.js';
import type { Pools } from './pools.js';
import { RedisPools } from './redis-pools.js';

export type { SharedGrant };

/** What a SharedLimiter does when its backend fails or times out (as RateLimiter's). */
export type SharedBackendErrorPolicy = 'fail-open' | 'fail-closed' | 'fallback';

/** SharedLimiterOptions configures a {@link SharedLimiter}. */
export interface SharedLimiterOptions {
  /** Where the pools live: a MemoryBackend (this process), or a RedisBackend / HybridBackend (Redis). */
  backend: Backend;
  /**
   * The pools' name, keeping apart limiters that share a backend (e.g. 'openai-requests' and
   * 'openai-llm-tokens').
   * @default 'shared'
   */
  name?: string;
  /**
   * Each pool's policy, or a function pool → policy (e.g. per model). A function returning
   * undefined means that pool has no limit: its calls are admitted at once.
   * @example (model) => ({ 'gpt-4o': { rate: 10_000, per: '1m' } })[model]
   */
  policy: PolicyInput | ((pool: string) => PolicyInput | undefined);
  /**
   * A key's weight: when keys contend, each gets the pool's refill in proportion to it. A finite
   * number > 0 (at most 1e6); anything else fails the call with InvalidOptionsError.
   * @default () => 1
   */
  weight?: (key: string) => number;
  /** As RateLimiter's: 'fail-open', 'fail-closed' or 'fallback' (a pool in this process). @default 'fallback' */
  onBackendError?: SharedBackendErrorPolicy;
  /** After a backend failure, one call every `probeIntervalMs` tries the backend again. @default 500 */
  probeIntervalMs?: number;
  /** Called with every backend failure (for logs and metrics). Must not throw. */
  onError?: (error: unknown) => void;
}

/** DEFAULT_SHARED_OPTIONS holds the defaults of {@link SharedLimiterOptions}. */
export const DEFAULT_SHARED_OPTIONS = {
  name: 'shared',
  pool: 'default',
  onBackendError: 'fallback',
  probeIntervalMs: 500,
} as const;

/** Options of one {@link SharedLimiter.acquire} call. */
export interface SharedAcquireOptions {
  /** Tokens this call takes: a finite number > 0, at most the pool's capacity. @default 1 */
  cost?: number;
  /** The pool drawn on (e.g. the model). @default 'default' */
  pool?: string;
  /** Cancels the wait: the call rejects with AbortedError and its tokens go back. */
  signal?: AbortSignal;
  /** The longest this call may wait, in ms; longer fails at once with MaxWaitExceededError. @default Infinity */
  maxWaitMs?: number;
}

/** Options of one {@link SharedLimiter.tryAcquire} call. */
export interface SharedTryAcquireOptions {
  cost?: number;
  pool?: string;
}

/** Options of one {@link SharedLimiter.refund} call. */
export interface SharedRefundOptions {
  pool?: string;
}

/**
 * PoolObservation is what the provider said about a pool, each field optional: its `limit`
 * (tokens per the policy's `per`), the tokens `remaining`, ms until its window resets
 * (`resetAfterMs`), and ms before it takes another call (`retryAfterMs`). Missing, negative or
 * NaN fields are ignored.
 */
export interface PoolObservation {
  limit?: number;
  remaining?: number;
  resetAfterMs?: number;
  retryAfterMs?: number;
}

const optionsSchema = z
  .object({
    backend: z.custom<Backend>(
      (v) => v instanceof MemoryBackend || v instanceof RedisBackend || v instanceof HybridBackend,
      { error: (i) => `must be a MemoryBackend, RedisBackend or HybridBackend (received ${describe(i.input)})` },
    ),
    policy: z.unknown(),
    name: z.string({ error: (i) => `must be a string (received ${describe(i.input)})` }).optional(),
    weight: z
      .custom<(k: string) => number>((v) => typeof v === 'function', {
        error: (i) => `must be a function key → number (received ${describe(i.input)})`,
      })
      .optional(),
    onBackendError: z
      .enum(['fail-open', 'fail-closed', 'fallback'], {
        error: (i) => `must be 'fail-open', 'fail-closed' or 'fallback' (received ${describe(i.input)})`,
      })
      .optional(),
    probeIntervalMs: z
      .number({ error: (i) => `must be a number of ms (received ${describe(i.input)})` })
      .refine((v) => Number.isFinite(v) && v > 0, { error: (i) => `must be a finite number of ms > 0 (received ${describe(i.input)})` })
      .optional(),
    onError: z
      .custom<(e: unknown) => void>((v) => typeof v === 'function', {
        error: (i) => `must be a function (received ${describe(i.input)})`,
      })
      .optional(),
  })
  .strict();

const memoryPools = new WeakMap<MemoryBackend, MemoryPools>();
const redisPools = new WeakMap<RedisBackend, RedisPools>();

function poolsOf(backend: Backend): Pools {
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

const OPEN: PoolAnswer = Object.freeze({ status: GRANTED, ms: 0, remaining: 0, resetAfterMs: 0 });
const OPEN_POOLS: Pools = { kind: 'fail-open', decide: () => OPEN, refund: () => undefined, observe: () => undefined };
const UNLIMITED: Decision = Object.freeze({ allowed: true, remaining: Number.POSITIVE_INFINITY, retryAfterMs: 0, resetAfterMs: 0 });
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
 * from the bucket, into debt if need be, and it starts when the debt is repaid (one round trip).
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
 * already held in this process wait too), a lower `remaining` empties the bucket down to it, a
 * lower `limit` replaces the rate (capacity scaled alike) for max(per, resetAfterMs).
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
  readonly #pools: Pools;
  readonly #sync: boolean;
  readonly #static: Policy | undefined;
  readonly #policyFn: ((pool: string) => PolicyInput | undefined) | undefined;
  readonly #policies = new WeakMap<object, Policy>();
  readonly #weight: ((key: string) => number) | undefined;
  readonly #onError: ((e: unknown) => void) | undefined;
  readonly #breaker: Breaker;
  readonly #queues: FairQueues;
  #fallback: MemoryPools | undefined;

  constructor(options: SharedLimiterOptions) {
    if (typeof options !== 'object' || options === null) {
      throw new InvalidOptionsError(`invalid SharedLimiter options: must be an object with backend and policy (received ${describe(options)})`);
    }
    const parsed = optionsSchema.safeParse(options);
    if (!parsed.success) throw toOptionsError('SharedLimiter options', parsed.error);
    const o = parsed.data;
    this.backend = o.backend;
    this.name = o.name ?? DEFAULT_SHARED_OPTIONS.name;
    this.onBackendError = o.onBackendError ?? DEFAULT_SHARED_OPTIONS.onBackendError;
    this.#weight = o.weight;
    this.#onError = o.onError;
    this.#breaker = new Breaker(o.probeIntervalMs ?? DEFAULT_SHARED_OPTIONS.probeIntervalMs);
    if (typeof o.policy === 'function') this.#policyFn = o.policy as (pool: string) => PolicyInput | undefined;
    else this.#static = normalizePolicy(o.policy, 'policy');
    this.#pools = poolsOf(o.backend);
    this.#sync = this.#pools instanceof MemoryPools;
    this.#queues = new FairQueues({
      ask: (w, maxWait, more) => this.#ask(w.pool, w.key, w.policy, w.cost, w.weight, 'r', maxWait, more),
      giveBack: (on, w) => this.#refundOn(on, w.pool, w.key, w.policy, w.cost),
    });
  }

  /** policyFor returns `pool`'s validated policy, or undefined when it has no limit. */
  policyFor(pool: string): Policy | undefined {
    if (this.#static !== undefined) return this.#static;
    const input = (this.#policyFn as (pool: string) => PolicyInput | undefined)(pool);
    if (input === undefined) return undefined;
    if (typeof input === 'object' && input !== null) {
      const cached = this.#policies.get(input);
      if (cached !== undefined) return cached;
      const p = normalizePolicy(input, `policy(${JSON.stringify(pool.length > 40 ? `${pool.slice(0, 37)}...` : pool)})`);
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
      if (policy === undefined) return Promise.resolve({ waitedMs: 0, remaining: Number.POSITIVE_INFINITY });
      if (cost > policy.capacity) throw new CostExceedsCapacityError(key, cost, policy.capacity);
      weight = this.#weightOf(key);
      if (signal?.aborted) throw new AbortedError(key, signal.reason);
    } catch (e) {
      return Promise.reject(e);
    }
    const queued = this.#queues.size !== 0 && this.#queues.has(queueId(pool, key));
    if (this.#sync && !queued) {
      // Fast path: nobody of this key waits here and the pool answers at once.
      const a = (this.#pools as MemoryPools).decide(this.name, pool, key, policy, cost, weight, 'r', maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs, false);
      if (a.status === GRANTED && a.ms <= 0) return Promise.resolve({ waitedMs: 0, remaining: a.remaining });
      return this.#wait(pool, key, policy, cost, weight, maxWaitMs, signal, { a, on: this.#pools });
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
          r = this.#ask(pool, key, policy, cost, weight, 'r', maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs, false);
        } catch (e) {
          reject(e);
          return;
        }
        this.#queues.enqueue(w, r);
        return;
      }
      if (maxWaitMs !== Number.POSITIVE_INFINITY) {
        const est = this.#queues.estimate(queueId(pool, key), cost, policy);
        if (est > maxWaitMs) {
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
      if (policy === undefined) return Promise.resolve(UNLIMITED);
      if (cost > policy.capacity) throw new CostExceedsCapacityError(key, cost, policy.capacity);
      const weight = this.#weightOf(key);
      const id = queueId(pool, key);
      if (this.#queues.has(id)) {
        const est = this.#queues.estimate(id, cost, policy);
        return Promise.resolve({ allowed: false, remaining: 0, retryAfterMs: Math.max(1, est), resetAfterMs: Math.max(1, est) });
      }
      const r = this.#ask(pool, key, policy, cost, weight, 't', -1, false);
      return r instanceof Promise ? r.then(toDecision) : Promise.resolve(toDecision(r));
    } catch (e) {
      return Promise.reject(e);
    }
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
      const on = this.#breaker.allow() ? this.#pools : this.#degradedPools();
      return this.#refundOn(on, pool, key, policy, amount) ?? Promise.resolve();
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
      this.#fallback?.observe(this.name, pool, policy, o);
      if (!this.#breaker.allow()) return Promise.resolve();
      const epoch = this.#breaker.epoch;
      const r = this.#pools.observe(this.name, pool, policy, o);
      if (r instanceof Promise) return r.then(() => this.#breaker.up(), (e: unknown) => this.#failed(e, epoch));
      return Promise.resolve();
    } catch (e) {
      this.#report(e);
      return Promise.resolve();
    }
  }

  /** The number of callers of this process waiting on `key` in `pool` (the head included). */
  queued(key: string, pool: string = DEFAULT_SHARED_OPTIONS.pool): number {
    return this.#queues.queued(queueId(pool, key));
  }

  // ---- the pools, and what happens when they fail --------------------------------------------

  #ask(
    pool: string,
    key: string,
    policy: Policy,
    cost: number,
    weight: number,
    mode: 't' | 'r',
    maxWait: number,
    more: boolean,
  ): MaybePromise<Answered> {
    if (this.#sync) return { a: this.#pools.decide(this.name, pool, key, policy, cost, weight, mode, maxWait, more) as PoolAnswer, on: this.#pools };
    if (!this.#breaker.allow()) return this.#degraded(pool, key, policy, cost, weight, mode, maxWait, more, undefined);
    const epoch = this.#breaker.epoch;
    let r: MaybePromise<PoolAnswer>;
    try {
      r = this.#pools.decide(this.name, pool, key, policy, cost, weight, mode, maxWait, more);
    } catch (e) {
      this.#failed(e, epoch);
      return this.#degraded(pool, key, policy, cost, weight, mode, maxWait, more, e);
    }
    if (!(r instanceof Promise)) return { a: r, on: this.#pools };
    return r.then(
      (a) => {
        this.#breaker.up();
        return { a, on: this.#pools };
      },
      (e: unknown) => {
        this.#failed(e, epoch);
        return this.#degraded(pool, key, policy, cost, weight, mode, maxWait, more, e);
      },
    );
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
    error: unknown,
  ): Answered {
    switch (this.onBackendError) {
      case 'fail-open':
        return { a: OPEN, on: OPEN_POOLS };
      case 'fail-closed':
        throw new BackendUnavailableError(`the ${this.backend.constructor.name} backend is unavailable`, error ?? this.#breaker.lastError);
      default: {
        const fb = this.#fallbackPools();
        return { a: fb.decide(this.name, pool, key, policy, cost, weight, mode, maxWait, more), on: fb };
      }
    }
  }

  #degradedPools(): Pools {
    return this.onBackendError === 'fallback' ? this.#fallbackPools() : OPEN_POOLS;
  }

  #fallbackPools(): MemoryPools {
    this.#fallback ??= new MemoryPools();
    return this.#fallback;
  }

  #failed(e: unknown, epoch: number): void {
    this.#breaker.down(e, epoch);
    this.#report(e);
  }

  #report(e: unknown): void {
    if (this.#onError === undefined) return;
    try {
      this.#onError(e);
    } catch {
      // A reporting hook must not break admission.
    }
  }

  /** Undefined when done synchronously; a returned promise never rejects. */
  #refundOn(on: Pools, pool: string, key: string, policy: Policy, amount: number): Promise<void> | undefined {
    const epoch = this.#breaker.epoch;
    let r: MaybePromise<void>;
    try {
      r = on.refund(this.name, pool, key, policy, amount);
    } catch (e) {
      this.#refundFailed(e, epoch, pool, key, policy, amount);
      return undefined;
    }
    if (r instanceof Promise) return r.then(undefined, (e: unknown) => this.#refundFailed(e, epoch, pool, key, policy, amount));
    return undefined;
  }

  #refundFailed(e: unknown, epoch: number, pool: string, key: string, policy: Policy, amount: number): void {
    this.#failed(e, epoch);
    if (this.onBackendError === 'fallback') this.#fallbackPools().refund(this.name, pool, key, policy, amount);
  }
}

function toDecision(r: Answered): Decision {
  const a = r.a;
  const allowed = a.status === GRANTED;
  return { allowed, remaining: a.remaining, retryAfterMs: allowed ? 0 : Math.max(1, a.ms), resetAfterMs: a.resetAfterMs };
}

function num(v: unknown): number {
  return typeof v === 'number' && v >= 0 && Number.isFinite(v) ? v : NOT_SAID;
}
