import type { Backend } from './backend.js';
import { checkAmount, checkCost, checkKey, checkMaxWait, checkSignal } from './args.js';
import type { Breaker } from './breaker.js';
import type { Decision, Reservation } from './bucket.js';
import { AbortedError, CostExceedsCapacityError, MaxWaitExceededError } from './errors.js';
import { GuardedBackend } from './guarded-backend.js';
import { KeyQueues, type QueueHost, type Waiter } from './key-queue.js';
import { LimiterMetrics } from './metrics.js';
import {
  type AcquireOptions,
  type BackendErrorPolicy,
  type Grant,
  type RateLimiterOptions,
  type TryAcquireOptions,
  parseLimiterOptions,
} from './options.js';
import { type Policy, type PolicyInput, normalizePolicy } from './policy.js';

/** The synchronous entries of RateLimiter, for @tollgate/core/internal (set in a static block). */
let acquireEntry: (l: RateLimiter, key: string, options: AcquireOptions | undefined) => Grant | Promise<Grant>;
let refundEntry: (l: RateLimiter, key: string, amount: number) => Promise<void> | undefined;

/**
 * RateLimiter admits calls per key from token buckets with one policy (or one per key, for tiers).
 *
 * - {@link tryAcquire} takes tokens now if the bucket holds them, else says when it would.
 * - {@link acquire} waits its turn: in this process the callers of one key form a FIFO queue, and
 *   only the head holds a reservation in the backend, taken into debt (one round trip per
 *   admitted call, no polling). Processes sharing a key through Redis interleave fairly: each
 *   reserves again only after its previous caller is admitted.
 * - {@link refund} gives tokens back.
 *
 * A cost above the capacity can never be served and fails at once with
 * {@link CostExceedsCapacityError}. Safe for concurrent use; share one limiter per policy.
 *
 * @example
 * const limiter = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 5, per: '1s' } })
 * await limiter.acquire('user-42')               // waits its turn if user-42 is over quota
 * const d = await limiter.tryAcquire('user-42')  // { allowed, remaining, retryAfterMs, resetAfterMs }
 */
export class RateLimiter {
  readonly backend: Backend;
  readonly name: string;
  readonly onBackendError: BackendErrorPolicy;
  readonly probeIntervalMs: number;
  readonly #staticPolicy: Policy | undefined;
  readonly #policyFn: ((key: string) => PolicyInput) | undefined;
  readonly #policies = new WeakMap<object, Policy>();
  /** Breakers per shard of the backend, and the failure policy. */
  readonly #guard: GuardedBackend;
  /** The breaker of an unsharded backend, read without a call (undefined: sharded). */
  readonly #breaker: Breaker | undefined;
  readonly #queues: KeyQueues;
  readonly #metrics: LimiterMetrics;
  /** The last rejection the backend answered synchronously, and the promise made for it. */
  #rejected: Decision | undefined;
  #rejectedP: Promise<Decision> = Promise.resolve({ allowed: false, remaining: 0, retryAfterMs: 1, resetAfterMs: 1 });

  static {
    acquireEntry = (l, key, options) => l.#acquire(key, options, true);
    refundEntry = (l, key, amount) => l.#refundNow(key, amount);
  }

  constructor(options: RateLimiterOptions) {
    const o = parseLimiterOptions(options);
    this.backend = o.backend;
    this.name = o.name;
    this.onBackendError = o.onBackendError;
    this.probeIntervalMs = o.probeIntervalMs;
    if (typeof o.policy === 'function') {
      this.#policyFn = o.policy as (key: string) => PolicyInput;
    } else {
      this.#staticPolicy = normalizePolicy(o.policy, 'policy');
    }
    this.#guard = new GuardedBackend(o.name, o.backend, o.onBackendError, o.probeIntervalMs, o.onError);
    this.#breaker = typeof o.backend.shardOf === 'function' ? undefined : this.#guard.breakerOf('');
    this.#metrics = new LimiterMetrics(o.name, o.backend.kind);
    this.#queues = new KeyQueues(this.#queueHost, this.#metrics);
  }

  /**
   * policyFor returns the validated policy of `key`. Throws {@link InvalidOptionsError} when a
   * policy function returns an invalid policy.
   */
  policyFor(key: string): Policy {
    if (this.#staticPolicy !== undefined) return this.#staticPolicy;
    const input = (this.#policyFn as (key: string) => PolicyInput)(key);
    if (typeof input === 'object' && input !== null) {
      const cached = this.#policies.get(input);
      if (cached !== undefined) return cached;
      const p = normalizePolicy(input, `policy(${JSON.stringify(key.length > 40 ? `${key.slice(0, 37)}...` : key)})`);
      this.#policies.set(input, p);
      return p;
    }
    return normalizePolicy(input, 'policy(key)');
  }

  /**
   * tryAcquire takes `cost` tokens from `key`'s bucket now if it holds them; otherwise it takes
   * nothing and says, in `retryAfterMs`, when it would. It never waits, and it does not jump
   * the queue: while callers of this process wait on `key` in `acquire`, it answers not allowed.
   */
  tryAcquire(key: string, options?: TryAcquireOptions): Promise<Decision> {
    try {
      const cost = options === undefined ? 1 : checkCost(options.cost);
      if (typeof key !== 'string') checkKey(key);
      const policy = this.#staticPolicy ?? this.policyFor(key);
      const metrics = this.#metrics;
      if (cost > policy.capacity) {
        metrics.decision('rejected');
        throw new CostExceedsCapacityError(key, cost, policy.capacity);
      }
      // Most of the time no one waits anywhere: skip hashing the key a second time.
      if (this.#queues.size !== 0) {
        const q = this.#queues.get(key);
        if (q !== undefined) {
          metrics.decision('rejected');
          return Promise.resolve({
            allowed: false,
            remaining: 0,
            retryAfterMs: Math.max(1, this.#queues.estimate(q, cost, policy)),
            resetAfterMs: Math.max(1, this.#queues.estimate(q, policy.capacity, policy)),
          });
        }
      }
      const breaker = this.#breakerOf(key);
      if (breaker.downUntil !== 0 && !breaker.shouldProbe()) return this.#degradedTry(key, policy, cost, breaker);
      let r: Decision | Promise<Decision>;
      const epoch = breaker.epoch;
      try {
        r = this.backend.tryTake(this.name, key, policy, cost);
      } catch (e) {
        this.#failed(breaker, e, epoch);
        return this.#degradedTry(key, policy, cost, breaker, e);
      }
      // The asynchronous case is a method of its own, so the synchronous path creates no closures.
      if (r instanceof Promise) return this.#tryAnswered(r, key, policy, cost, breaker, epoch);
      // A synchronous backend answered the probe: trusted again.
      if (breaker.downUntil !== 0) breaker.up();
      if (r.allowed) {
        metrics.allowed();
        return Promise.resolve(r);
      }
      metrics.rejected();
      // A backend answers a repeated rejection with the same frozen Decision: so the same promise.
      if (r !== this.#rejected) {
        this.#rejected = r;
        this.#rejectedP = Promise.resolve(r);
      }
      return this.#rejectedP;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  #tryAnswered(
    r: Promise<Decision>,
    key: string,
    policy: Policy,
    cost: number,
    breaker: Breaker,
    epoch: number,
  ): Promise<Decision> {
    return r.then(
      (d) => {
        breaker.up();
        this.#metrics.decision(d.allowed ? 'allowed' : 'rejected');
        return d;
      },
      (e: unknown) => {
        this.#failed(breaker, e, epoch);
        return this.#degradedTry(key, policy, cost, breaker, e);
      },
    );
  }

  /**
   * acquire waits until `key`'s bucket grants `cost` tokens, in arrival order among this
   * process's callers of `key`, then resolves with how long it waited.
   *
   * Rejects at once with {@link CostExceedsCapacityError} (cost above capacity),
   * {@link MaxWaitExceededError} (it would wait more than `maxWaitMs`; nothing taken) or
   * {@link InvalidArgumentError}; with {@link AbortedError} when `signal` fires (its tokens go
   * back and the next caller moves up at once).
   */
  acquire(key: string, options?: AcquireOptions): Promise<Grant> {
    return this.#acquire(key, options, false) as Promise<Grant>;
  }

  /** acquire's work; `sync` answers an at-once grant itself instead of a promise of it. */
  #acquire(key: string, options: AcquireOptions | undefined, sync: boolean): Grant | Promise<Grant> {
    let cost: number;
    let policy: Policy;
    let maxWaitMs: number;
    let signal: AbortSignal | undefined;
    try {
      cost = checkCost(options?.cost);
      if (typeof key !== 'string') checkKey(key);
      maxWaitMs = checkMaxWait(options?.maxWaitMs);
      signal = checkSignal(options?.signal);
      policy = this.policyFor(key);
      if (cost > policy.capacity) {
        this.#metrics.decision('rejected');
        throw new CostExceedsCapacityError(key, cost, policy.capacity);
      }
      if (signal?.aborted) {
        this.#metrics.decision('aborted');
        throw new AbortedError(key, signal.reason);
      }
    } catch (e) {
      return Promise.reject(e);
    }

    const q = this.#queues.get(key);
    // Fast path: nobody waits on this key and the backend answers synchronously with no wait.
    const breaker = q === undefined ? this.#breakerOf(key) : undefined;
    if (breaker !== undefined && breaker.downUntil === 0) {
      let r: Reservation | Promise<Reservation> | undefined;
      const epoch = breaker.epoch;
      try {
        r = this.backend.reserve(this.name, key, policy, cost, maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs);
      } catch {
        r = undefined;
      }
      if (r !== undefined && !(r instanceof Promise)) {
        if (r.ok && r.waitMs === 0) {
          this.#metrics.grantedAtOnce();
          const grant = { waitedMs: 0, remaining: r.remaining };
          return sync ? grant : Promise.resolve(grant);
        }
        if (!r.ok) {
          this.#metrics.decision('timeout');
          return Promise.reject(new MaxWaitExceededError(key, r.waitMs, maxWaitMs));
        }
        // Reserved with a wait: queue it as the head already holding its reservation.
        return this.#queues.enqueue(key, cost, policy, maxWaitMs, signal, { backend: this.backend, reservation: r });
      }
      if (r !== undefined) {
        // An asynchronous backend: this caller is the head, its reservation in flight.
        const reservation = r;
        return this.#queues.enqueue(key, cost, policy, maxWaitMs, signal, {
          pending: (w) => this.#reserveAnswered(reservation, w, breaker, epoch),
        });
      }
    }

    if (q !== undefined && maxWaitMs !== Number.POSITIVE_INFINITY) {
      const estimate = this.#queues.estimate(q, cost, policy);
      if (estimate > maxWaitMs) {
        this.#metrics.decision('timeout');
        return Promise.reject(new MaxWaitExceededError(key, estimate, maxWaitMs));
      }
    }
    return this.#queues.enqueue(key, cost, policy, maxWaitMs, signal);
  }

  /**
   * refund gives `amount` tokens back to `key`'s bucket (capped at capacity): a call that did
   * not happen, or LLM-token reconciliation after a call used fewer than estimated.
   */
  refund(key: string, amount: number): Promise<void> {
    try {
      return this.#refundNow(key, amount) ?? Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * {@link refund}, done synchronously (undefined) when the backend is. Throws what `refund`
   * rejects with; a returned promise never rejects.
   */
  #refundNow(key: string, amount: number): Promise<void> | undefined {
    checkKey(key);
    checkAmount(amount);
    if (amount === 0) return undefined;
    const policy = this.policyFor(key);
    const target = this.#guard.targetOf(key);
    if (this.#queues.size !== 0) {
      const q = this.#queues.holdingOn(key, target);
      if (q !== undefined) return this.#queues.reReserve(q, amount);
    }
    return this.#guard.refundOn(target, key, policy, amount);
  }

  /** The number of callers of this process waiting on `key` (the head included). */
  queued(key: string): number {
    return this.#queues.queued(key);
  }

  // ---- the queues' reservations -----------------------------------------------------------------

  readonly #queueHost: QueueHost = {
    reserve: (w, maxWaitMs) => this.#reserveFor(w, maxWaitMs),
    refund: (w, amount) =>
      w.heldOn === undefined ? undefined : this.#guard.refundOn(w.heldOn, w.key, w.policy, amount),
    degraded: (w) => this.#guard.isDegraded(w.heldOn),
  };

  /** A queued caller's reservation: on the backend, or by the failure policy while it is down. */
  #reserveFor(w: Waiter, maxWaitMs: number): Reservation | Promise<Reservation> {
    const breaker = this.#breakerOf(w.key);
    if (breaker.downUntil !== 0 && !breaker.shouldProbe()) return this.#degradedReserve(w, maxWaitMs, breaker);
    const epoch = breaker.epoch;
    let r: Reservation | Promise<Reservation>;
    try {
      r = this.backend.reserve(this.name, w.key, w.policy, w.cost, maxWaitMs);
    } catch (e) {
      this.#failed(breaker, e, epoch);
      return this.#degradedReserve(w, maxWaitMs, breaker, e);
    }
    if (r instanceof Promise) return this.#reserveAnswered(r, w, breaker, epoch);
    if (breaker.downUntil !== 0) breaker.up();
    w.heldOn = this.backend;
    return r;
  }

  /** An asynchronous reservation's answer; a failure is decided by the failure policy. */
  #reserveAnswered(r: Promise<Reservation>, w: Waiter, breaker: Breaker, epoch: number): Promise<Reservation> {
    return r.then(
      (res) => {
        breaker.up();
        w.heldOn = this.backend;
        return res;
      },
      (e: unknown) => {
        this.#failed(breaker, e, epoch);
        const maxWaitMs = w.deadline === Number.POSITIVE_INFINITY ? -1 : Math.max(0, w.deadline - performance.now());
        return this.#degradedReserve(w, maxWaitMs, breaker, e);
      },
    );
  }

  // ---- backend failures ----------------------------------------------------------------------

  #breakerOf(key: string): Breaker {
    return this.#breaker ?? this.#guard.breakerOf(key);
  }

  #failed(breaker: Breaker, error: unknown, epoch: number): void {
    this.#guard.failed(breaker, error, epoch);
  }

  /** A tryAcquire decided by the failure policy, counted as `fallback` (`rejected` on fail-closed). */
  #degradedTry(key: string, policy: Policy, cost: number, breaker: Breaker, error?: unknown): Promise<Decision> {
    this.#metrics.decision(this.onBackendError === 'fail-closed' ? 'rejected' : 'fallback');
    return this.#guard.degradedTry(key, policy, cost, breaker, error);
  }

  #degradedReserve(w: Waiter, maxWaitMs: number, breaker: Breaker, error?: unknown): Reservation {
    return this.#guard.degradedReserve(w, maxWaitMs, breaker, error);
  }
}

/**
 * acquireNow is `limiter.acquire(key, options)`, answering with the grant itself (not a promise)
 * when it is granted at once by a synchronous backend. A subclass that overrides `acquire` is
 * honoured: its `acquire` is called.
 */
export function acquireNow(limiter: RateLimiter, key: string, options?: AcquireOptions): Grant | Promise<Grant> {
  // An override (metrics, key namespacing) must see every call.
  if (limiter.acquire !== RateLimiter.prototype.acquire) return limiter.acquire(key, options);
  return acquireEntry(limiter, key, options);
}

/**
 * refundNow is `limiter.refund(key, amount)`, done synchronously (undefined) when the backend is.
 * Throws what `refund` rejects with; a returned promise never rejects.
 */
export function refundNow(limiter: RateLimiter, key: string, amount: number): Promise<void> | undefined {
  if (limiter.refund !== RateLimiter.prototype.refund) return limiter.refund(key, amount).catch(() => undefined);
  return refundEntry(limiter, key, amount);
}
