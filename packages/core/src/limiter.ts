import { z } from 'zod';
import type { Backend } from './backend.js';
import { MemoryBackend } from './backends/memory.js';
import type { Decision, Reservation } from './bucket.js';
import {
  AbortedError,
  BackendUnavailableError,
  CostExceedsCapacityError,
  InvalidArgumentError,
  InvalidOptionsError,
  MaxWaitExceededError,
} from './errors.js';
import { type Policy, type PolicyInput, describe, normalizePolicy, toOptionsError } from './policy.js';

/** What the limiter does when its backend fails or times out. */
export type BackendErrorPolicy = 'fail-open' | 'fail-closed' | 'fallback';

/** RateLimiterOptions configures a {@link RateLimiter}. */
export interface RateLimiterOptions {
  /** Where the buckets live: a MemoryBackend, RedisBackend or HybridBackend. */
  backend: Backend;
  /**
   * The bucket's policy, or a function key → policy (tiers: `(user) => tiers[planOf(user)]`).
   * A function is called on every call; return the same object for the same tier, and its
   * validation is done once.
   * @example { rate: 10, per: '1s', capacity: 100 }
   */
  policy: PolicyInput | ((key: string) => PolicyInput);
  /**
   * The bucket's name inside its key, keeping apart limiters that share a backend and a key
   * (e.g. 'requests' and 'llm-tokens' per user).
   * @default 'default'
   */
  name?: string;
  /**
   * What a call sees when the backend fails (an error, or no answer within its timeout):
   * - 'fail-open': the call is admitted. No outage, no limit while it lasts.
   * - 'fail-closed': the call fails with {@link BackendUnavailableError}. No over-admission;
   *   the agent stops while the backend is down.
   * - 'fallback': the call is decided on a bucket in this process's memory until the backend
   *   answers again. Limits hold per process (N processes may admit up to N× the quota).
   * @default 'fallback'
   */
  onBackendError?: BackendErrorPolicy;
  /**
   * After a backend failure, calls go straight to `onBackendError` (no timeout each) and one call
   * every `probeIntervalMs` tries the backend again; the first success returns to it.
   * @default 500
   */
  probeIntervalMs?: number;
  /** Called with every backend failure (for logs and metrics). Must not throw. */
  onError?: (error: unknown) => void;
}

/**
 * The key of {@link RateLimiter}'s `acquire` that answers a grant made at once synchronously.
 * A registered symbol, not exported from the package: internal, for @tollgate/agent (which
 * finds it with `Symbol.for`); not part of the public API.
 * @internal
 */
export const ACQUIRE_NOW: unique symbol = Symbol.for('tollgate.acquireNow') as never;

/** The key of {@link RateLimiter}'s synchronous `refund` (same terms as ACQUIRE_NOW). @internal */
export const REFUND_NOW: unique symbol = Symbol.for('tollgate.refundNow') as never;

/** DEFAULT_LIMITER_OPTIONS holds the defaults of {@link RateLimiterOptions}. */
export const DEFAULT_LIMITER_OPTIONS = {
  name: 'default',
  onBackendError: 'fallback',
  probeIntervalMs: 500,
} as const satisfies Partial<RateLimiterOptions>;

/** Options of one {@link RateLimiter.tryAcquire} call. */
export interface TryAcquireOptions {
  /** Tokens this call takes: a finite number > 0, at most the capacity. @default 1 */
  cost?: number;
}

/** Options of one {@link RateLimiter.acquire} call. */
export interface AcquireOptions {
  /** Tokens this call takes: a finite number > 0, at most the capacity. @default 1 */
  cost?: number;
  /** Cancels the wait: the call rejects with {@link AbortedError} and its tokens go back. */
  signal?: AbortSignal;
  /**
   * The longest this call may wait, in ms. A call that would wait longer fails at once with
   * {@link MaxWaitExceededError} (carrying `retryAfterMs`) and takes no token. @default Infinity
   */
  maxWaitMs?: number;
}

/** Grant is what `acquire` resolves with once the caller may proceed. */
export interface Grant {
  /** Ms this call waited (queue and bucket together). */
  waitedMs: number;
  /** Whole tokens left in the bucket when the call was admitted. */
  remaining: number;
}

export type { Decision };

const optionsSchema = z
  .object({
    backend: z.custom<Backend>(
      (v) =>
        typeof v === 'object' &&
        v !== null &&
        typeof (v as Backend).tryTake === 'function' &&
        typeof (v as Backend).reserve === 'function' &&
        typeof (v as Backend).refund === 'function',
      { error: (i) => `must be a MemoryBackend, RedisBackend or HybridBackend (received ${describe(i.input)})` },
    ),
    policy: z.unknown(),
    name: z.string({ error: (i) => `must be a string (received ${describe(i.input)})` }).optional(),
    onBackendError: z
      .enum(['fail-open', 'fail-closed', 'fallback'], {
        error: (i) => `must be 'fail-open', 'fail-closed' or 'fallback' (received ${describe(i.input)})`,
      })
      .optional(),
    probeIntervalMs: z
      .number({ error: (i) => `must be a number of ms (received ${describe(i.input)})` })
      .refine((v) => Number.isFinite(v) && v > 0, {
        error: (i) => `must be a finite number of ms > 0 (received ${describe(i.input)})`,
      })
      .optional(),
    onError: z
      .custom<(e: unknown) => void>((v) => typeof v === 'function', {
        error: (i) => `must be a function (received ${describe(i.input)})`,
      })
      .optional(),
  })
  .strict();

/** A caller of `acquire` waiting its turn on one key. */
interface Waiter {
  readonly key: string;
  readonly cost: number;
  readonly policy: Policy;
  readonly start: number;
  /** Absolute deadline (performance.now ms), or Infinity. */
  readonly deadline: number;
  readonly resolve: (g: Grant) => void;
  readonly reject: (e: unknown) => void;
  readonly signal: AbortSignal | undefined;
  state: 'queued' | 'reserving' | 'holding' | 'done';
  /** Where the reservation was taken, to refund it there. */
  heldOn: Backend | undefined;
  /** Tokens left when reserved. */
  remaining: number;
  /** When a holding waiter is admitted (performance.now ms). */
  admitAt: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  onAbort: (() => void) | undefined;
}

/** The callers waiting on one key in this process, in arrival order; only the head reserves. */
interface KeyQueue {
  readonly key: string;
  readonly waiters: Waiter[];
  /** Index of the first waiter not yet handed to the backend. */
  next: number;
  /** The waiter holding (or taking) the key's reservation, if any. */
  head: Waiter | undefined;
  /** True while #pump runs for this queue (admissions inside it must not recurse into it). */
  pumping: boolean;
  /** How many waiters are in state 'queued', and their costs summed (for wait estimates). */
  queuedCount: number;
  queuedCost: number;
}

const now = (): number => performance.now();

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
  readonly #queues = new Map<string, KeyQueue>();
  readonly #onError: ((e: unknown) => void) | undefined;
  #fallback: MemoryBackend | undefined;
  /** Circuit breaker: 0 while the backend is trusted; else when to probe it next. */
  #downUntil = 0;
  #probing = false;
  /**
   * Counts the breaker's changes (opened, or closed again). A call notes it when it goes to the
   * backend; its failure counts only if the breaker has not changed since (an older call's
   * failure is stale). A counter, not a time: no clock read on the hot path.
   */
  #epoch = 0;
  /** The last rejection the backend answered synchronously, and the promise made for it. */
  #rejected: Decision | undefined;
  #rejectedP: Promise<Decision> = Promise.resolve({ allowed: false, remaining: 0, retryAfterMs: 1, resetAfterMs: 1 });
  /** The last backend failure: the `cause` of errors decided while the breaker is open. */
  #lastError: unknown;

  constructor(options: RateLimiterOptions) {
    if (typeof options !== 'object' || options === null) {
      throw new InvalidOptionsError(
        `invalid RateLimiter options: must be an object with backend and policy (received ${describe(options)})`,
      );
    }
    const parsed = optionsSchema.safeParse(options);
    if (!parsed.success) throw toOptionsError('RateLimiter options', parsed.error);
    const o = parsed.data;
    this.backend = o.backend;
    this.name = o.name ?? DEFAULT_LIMITER_OPTIONS.name;
    this.onBackendError = o.onBackendError ?? DEFAULT_LIMITER_OPTIONS.onBackendError;
    this.probeIntervalMs = o.probeIntervalMs ?? DEFAULT_LIMITER_OPTIONS.probeIntervalMs;
    this.#onError = o.onError;
    if (typeof o.policy === 'function') {
      this.#policyFn = o.policy as (key: string) => PolicyInput;
    } else {
      this.#staticPolicy = normalizePolicy(o.policy, 'policy');
    }
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
      if (cost > policy.capacity) throw new CostExceedsCapacityError(key, cost, policy.capacity);
      // Most of the time no one waits anywhere: skip hashing the key a second time.
      if (this.#queues.size !== 0) {
        const q = this.#queues.get(key);
        if (q !== undefined) {
          return Promise.resolve({
            allowed: false,
            remaining: 0,
            retryAfterMs: Math.max(1, this.#queueEstimate(q, cost, policy)),
            resetAfterMs: Math.max(1, this.#queueEstimate(q, policy.capacity, policy)),
          });
        }
      }
      if (this.#downUntil !== 0 && !this.#shouldProbe()) return this.#degradedTry(key, policy, cost, undefined);
      let r: Decision | Promise<Decision>;
      const epoch = this.#epoch;
      try {
        r = this.backend.tryTake(this.name, key, policy, cost);
      } catch (e) {
        return this.#degradedTry(key, policy, cost, e, epoch);
      }
      // The asynchronous case is a method of its own: its closures would otherwise cost every
      // call (synchronous ones too) a context allocation.
      if (r instanceof Promise) return this.#tryAnswered(r, key, policy, cost, epoch);
      if (r.allowed) return Promise.resolve(r);
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

  #tryAnswered(r: Promise<Decision>, key: string, policy: Policy, cost: number, epoch: number): Promise<Decision> {
    return r.then(
      (d) => {
        this.#backendUp();
        return d;
      },
      (e: unknown) => this.#degradedTry(key, policy, cost, e, epoch),
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

  /**
   * {@link acquire}, answering with the grant itself, not a promise of it, when it is granted at
   * once without waiting (the fast path of a synchronous backend such as MemoryBackend).
   * @internal for @tollgate/agent, whose per-request admission is cheaper without the promise.
   */
  [ACQUIRE_NOW](key: string, options?: AcquireOptions): Grant | Promise<Grant> {
    return this.#acquire(key, options, true);
  }

  /** acquire's work; `sync` answers an at-once grant itself instead of a promise of it. */
  #acquire(key: string, options: AcquireOptions | undefined, sync: boolean): Grant | Promise<Grant> {
    let cost: number;
    let policy: Policy;
    let maxWaitMs: number;
    let signal: AbortSignal | undefined;
    try {
      cost = checkCost(options?.cost);
      checkKey(key);
      maxWaitMs = checkMaxWait(options?.maxWaitMs);
      signal = checkSignal(options?.signal);
      policy = this.policyFor(key);
      if (cost > policy.capacity) throw new CostExceedsCapacityError(key, cost, policy.capacity);
      if (signal?.aborted) throw new AbortedError(key, signal.reason);
    } catch (e) {
      return Promise.reject(e);
    }

    const q = this.#queues.get(key);
    // Fast path: nobody waits on this key and the backend answers synchronously with no wait.
    if (q === undefined && this.#downUntil === 0) {
      let r: Reservation | Promise<Reservation> | undefined;
      const epoch = this.#epoch;
      try {
        r = this.backend.reserve(this.name, key, policy, cost, maxWaitMs === Infinity ? -1 : maxWaitMs);
      } catch {
        r = undefined;
      }
      if (r !== undefined && !(r instanceof Promise)) {
        if (r.ok && r.waitMs === 0) {
          const grant = { waitedMs: 0, remaining: r.remaining };
          return sync ? grant : Promise.resolve(grant);
        }
        if (!r.ok) return Promise.reject(new MaxWaitExceededError(key, r.waitMs, maxWaitMs));
        // Reserved with a wait: queue it as the head already holding its reservation.
        return this.#enqueue(key, cost, policy, maxWaitMs, signal, { backend: this.backend, reservation: r });
      }
      if (r !== undefined) {
        // An asynchronous backend: this caller is the head, its reservation in flight.
        return this.#enqueue(key, cost, policy, maxWaitMs, signal, { backend: this.backend, pending: r, epoch });
      }
    }

    if (q !== undefined && maxWaitMs !== Infinity) {
      const estimate = this.#queueEstimate(q, cost, policy);
      if (estimate > maxWaitMs) return Promise.reject(new MaxWaitExceededError(key, estimate, maxWaitMs));
    }
    return this.#enqueue(key, cost, policy, maxWaitMs, signal, undefined);
  }

  /**
   * refund gives `amount` tokens back to `key`'s bucket (capped at capacity): a call that did
   * not happen, or LLM-token reconciliation after a call used fewer than estimated.
   */
  refund(key: string, amount: number): Promise<void> {
    try {
      return this[REFUND_NOW](key, amount) ?? Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * {@link refund}, done synchronously (undefined) when the backend is: no promise at all. Throws
   * what `refund` rejects with; a returned promise never rejects.
   * @internal for @tollgate/agent, which settles LLM tokens after every request.
   */
  [REFUND_NOW](key: string, amount: number): Promise<void> | undefined {
    checkKey(key);
    if (typeof amount !== 'number' || !Number.isFinite(amount) || amount < 0) {
      throw new InvalidArgumentError(`amount must be a finite number >= 0 (received ${describe(amount)})`);
    }
    if (amount === 0) return undefined;
    const policy = this.policyFor(key);
    return this.#refundOn(this.#downUntil !== 0 ? this.#fallbackBackend() : this.backend, key, policy, amount);
  }

  /** The number of callers of this process waiting on `key` (the head included). */
  queued(key: string): number {
    const q = this.#queues.get(key);
    return q === undefined ? 0 : q.queuedCount + (q.head !== undefined ? 1 : 0);
  }

  // ---- queueing -------------------------------------------------------------------------------

  #enqueue(
    key: string,
    cost: number,
    policy: Policy,
    maxWaitMs: number,
    signal: AbortSignal | undefined,
    head: { backend: Backend; reservation?: Reservation; pending?: Promise<Reservation>; epoch?: number } | undefined,
  ): Promise<Grant> {
    return new Promise<Grant>((resolve, reject) => {
      const start = now();
      const w: Waiter = {
        key,
        cost,
        policy,
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
      let q = this.#queues.size === 0 ? undefined : this.#queues.get(key);
      if (q === undefined) {
        q = { key, waiters: [], next: 0, head: undefined, pumping: false, queuedCount: 0, queuedCost: 0 };
        this.#queues.set(key, q);
      }
      if (signal !== undefined) {
        w.onAbort = () => this.#abort(q as KeyQueue, w);
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      if (head !== undefined) {
        q.head = w;
        w.state = 'reserving';
        if (head.reservation !== undefined) this.#reserved(q, w, head.backend, head.reservation);
        else
          (head.pending as Promise<Reservation>).then(
            (r) => {
              this.#backendUp();
              this.#reserved(q as KeyQueue, w, head.backend, r);
            },
            (e: unknown) => this.#reserveFailed(q as KeyQueue, w, e, head.epoch ?? this.#epoch),
          );
        return;
      }
      q.waiters.push(w);
      q.queuedCount++;
      q.queuedCost += cost;
      if (maxWaitMs !== Infinity) {
        arm(w, maxWaitMs, () => {
          if (w.state !== 'queued') return;
          this.#finish(q as KeyQueue, w);
          reject(new MaxWaitExceededError(key, Math.max(1, this.#queueEstimate(q as KeyQueue, cost, policy)), maxWaitMs));
          this.#pumpSoon(q as KeyQueue);
        });
      }
      if (q.head === undefined) this.#pumpSoon(q);
    });
  }

  /** Hands the key's reservation to the next waiter in line, while the head is free. */
  #pump(q: KeyQueue): void {
    if (q.pumping) return;
    q.pumping = true;
    try {
      this.#pumpLoop(q);
    } finally {
      q.pumping = false;
    }
  }

  #pumpLoop(q: KeyQueue): void {
    while (q.head === undefined) {
      const w = q.waiters[q.next];
      if (w === undefined) {
        this.#dropIfIdle(q);
        return;
      }
      q.waiters[q.next] = undefined as unknown as Waiter;
      q.next++;
      if (q.next > 1024 && q.next * 2 > q.waiters.length) {
        q.waiters.splice(0, q.next);
        q.next = 0;
      }
      if (w.state !== 'queued') continue;
      this.#unqueue(q, w);
      if (w.timer !== undefined) {
        clearTimeout(w.timer);
        w.timer = undefined;
      }
      q.head = w;
      w.state = 'reserving';
      const maxWait = w.deadline === Infinity ? -1 : Math.max(0, w.deadline - now());
      const backend = this.#downUntil !== 0 && !this.#shouldProbe() ? undefined : this.backend;
      if (backend === undefined) {
        this.#reserveDegraded(q, w, undefined, maxWait);
        continue;
      }
      let r: Reservation | Promise<Reservation>;
      const epoch = this.#epoch;
      try {
        r = backend.reserve(this.name, w.key, w.policy, w.cost, maxWait);
      } catch (e) {
        this.#reserveFailed(q, w, e, epoch);
        continue;
      }
      if (r instanceof Promise) {
        r.then(
          (res) => {
            this.#backendUp();
            this.#reserved(q, w, backend, res);
          },
          (e: unknown) => this.#reserveFailed(q, w, e, epoch),
        );
        return;
      }
      this.#reserved(q, w, backend, r);
    }
  }

  /** The head's reservation came back: admit it now, after its wait, or refuse it. */
  #reserved(q: KeyQueue, w: Waiter, backend: Backend, r: Reservation): void {
    if (w.state === 'done') {
      // Aborted while the reservation was in flight: give it back, then let the next one go.
      if (r.ok) this.#refundQuietly(backend, w.key, w.policy, w.cost);
      if (q.head === w) q.head = undefined;
      this.#pumpSoon(q);
      return;
    }
    if (!r.ok) {
      this.#finish(q, w);
      w.reject(new MaxWaitExceededError(w.key, r.waitMs, w.deadline - w.start));
      this.#pumpSoon(q);
      return;
    }
    w.heldOn = backend;
    w.remaining = r.remaining;
    if (r.waitMs <= 0) {
      this.#admit(q, w);
      return;
    }
    w.state = 'holding';
    w.admitAt = now() + r.waitMs;
    arm(w, r.waitMs, () => this.#admit(q, w));
  }

  #admit(q: KeyQueue, w: Waiter): void {
    if (w.state === 'done') return;
    // Node's timers may fire up to ~1 ms early by performance.now(): never admit before the
    // bucket has repaid the debt, or a caller could run a hair over its quota.
    const early = w.state === 'holding' ? w.admitAt - now() : 0;
    if (early > 0) {
      arm(w, Math.ceil(early), () => this.#admit(q, w));
      return;
    }
    const waitedMs = now() - w.start;
    this.#finish(q, w);
    w.resolve({ waitedMs, remaining: w.remaining });
    this.#pumpSoon(q);
  }

  /** Move the queue on; inside the pump loop this is a no-op, as the loop goes on by itself. */
  #pumpSoon(q: KeyQueue): void {
    if (!q.pumping) this.#pump(q);
  }

  #reserveFailed(q: KeyQueue, w: Waiter, error: unknown, epoch: number): void {
    this.#backendDown(error, epoch);
    const maxWait = w.deadline === Infinity ? -1 : Math.max(0, w.deadline - now());
    this.#reserveDegraded(q, w, error, maxWait);
    this.#pumpSoon(q);
  }

  /** Decide the head's reservation by the onBackendError policy. */
  #reserveDegraded(q: KeyQueue, w: Waiter, error: unknown, maxWait: number): void {
    if (w.state === 'done') {
      if (q.head === w) q.head = undefined;
      return;
    }
    switch (this.onBackendError) {
      case 'fail-open':
        this.#reserved(q, w, this.#openBackend, { ok: true, waitMs: 0, remaining: 0, resetAfterMs: 0 });
        return;
      case 'fail-closed':
        this.#finish(q, w);
        w.reject(
          new BackendUnavailableError(
            `the ${this.backend.constructor.name} backend is unavailable`,
            error ?? this.#lastError,
          ),
        );
        return;
      default: {
        const fb = this.#fallbackBackend();
        this.#reserved(q, w, fb, fb.reserve(this.name, w.key, w.policy, w.cost, maxWait));
      }
    }
  }

  #abort(q: KeyQueue, w: Waiter): void {
    if (w.state === 'done') return;
    const state = w.state;
    const reason = w.signal?.reason;
    if (state === 'holding' && w.heldOn !== undefined) {
      // Give the tokens back first: the refund reaches the backend before the next reservation.
      this.#refundQuietly(w.heldOn, w.key, w.policy, w.cost);
    }
    if (state === 'reserving') {
      // The reservation is in flight; #reserved refunds it and moves the queue on.
      w.state = 'done';
      this.#cleanup(w);
      w.reject(new AbortedError(w.key, reason));
      return;
    }
    this.#finish(q, w);
    w.reject(new AbortedError(w.key, reason));
    this.#pumpSoon(q);
  }

  /** Mark `w` done, release the head if it held it, and clear its timer and listener. */
  #finish(q: KeyQueue, w: Waiter): void {
    if (w.state === 'queued') this.#unqueue(q, w);
    w.state = 'done';
    if (q.head === w) q.head = undefined;
    this.#cleanup(w);
  }

  #cleanup(w: Waiter): void {
    if (w.timer !== undefined) {
      clearTimeout(w.timer);
      w.timer = undefined;
    }
    if (w.onAbort !== undefined && w.signal !== undefined) {
      w.signal.removeEventListener('abort', w.onAbort);
      w.onAbort = undefined;
    }
  }

  #unqueue(q: KeyQueue, w: Waiter): void {
    if (--q.queuedCount === 0) q.queuedCost = 0;
    else q.queuedCost -= w.cost;
  }

  /** Called by the pump when no waiter is left: the key's queue is freed. */
  #dropIfIdle(q: KeyQueue): void {
    if (q.head === undefined && this.#queues.get(q.key) === q) this.#queues.delete(q.key);
  }

  /**
   * A lower bound on how long a new caller of cost `cost` would wait behind this queue: the head's
   * remaining hold, then every queued cost and its own at the policy's rate.
   */
  #queueEstimate(q: KeyQueue, cost: number, policy: Policy): number {
    const head = q.head;
    const headMs = head !== undefined && head.state === 'holding' ? Math.max(0, head.admitAt - now()) : 0;
    return Math.ceil(headMs + (cost + q.queuedCost) / policy.ratePerMs);
  }

  // ---- backend failures -----------------------------------------------------------------------

  readonly #openBackend: Backend = {
    kind: 'fail-open',
    tryTake: () => ({ allowed: true, remaining: 0, retryAfterMs: 0, resetAfterMs: 0 }),
    reserve: () => ({ ok: true, waitMs: 0, remaining: 0, resetAfterMs: 0 }),
    refund: () => undefined,
  };

  #fallbackBackend(): MemoryBackend {
    this.#fallback ??= new MemoryBackend();
    return this.#fallback;
  }

  #shouldProbe(): boolean {
    if (this.#probing || now() < this.#downUntil) return false;
    this.#probing = true;
    return true;
  }

  #backendUp(): void {
    if (this.#downUntil !== 0) {
      this.#downUntil = 0;
      this.#probing = false;
      this.#epoch++;
    }
  }

  /**
   * A backend call begun at breaker epoch `epoch` failed: open the breaker (calls skip the backend
   * until the next probe), or, when it is open, schedule the next probe. A failure of a call begun
   * before the last change says nothing about the backend now (a timeout still running when a
   * probe succeeded, or one of many calls in flight when the backend died), so it changes neither.
   */
  #backendDown(error: unknown, epoch: number): void {
    if (epoch === this.#epoch) {
      if (this.#downUntil === 0) this.#epoch++;
      this.#downUntil = now() + this.probeIntervalMs;
      this.#probing = false;
    }
    this.#lastError = error;
    if (this.#onError !== undefined) {
      try {
        this.#onError(error);
      } catch {
        // A reporting hook must not break admission.
      }
    }
  }

  #degradedTry(key: string, policy: Policy, cost: number, error: unknown, epoch = this.#epoch): Promise<Decision> {
    if (error !== undefined) this.#backendDown(error, epoch);
    switch (this.onBackendError) {
      case 'fail-open':
        return Promise.resolve({ allowed: true, remaining: 0, retryAfterMs: 0, resetAfterMs: 0 });
      case 'fail-closed':
        return Promise.reject(
          new BackendUnavailableError(
            `the ${this.backend.constructor.name} backend is unavailable`,
            error ?? this.#lastError,
          ),
        );
      default:
        return Promise.resolve(this.#fallbackBackend().tryTake(this.name, key, policy, cost));
    }
  }

  /** Undefined when done synchronously; a returned promise never rejects. */
  #refundOn(backend: Backend, key: string, policy: Policy, amount: number): Promise<void> | undefined {
    const epoch = this.#epoch;
    let r: void | Promise<void>;
    try {
      r = backend.refund(this.name, key, policy, amount);
    } catch (e) {
      this.#refundFailed(e, epoch, key, policy, amount);
      return undefined;
    }
    if (r !== undefined && typeof (r as PromiseLike<void>).then === 'function') {
      return Promise.resolve(r).then(undefined, (e: unknown) => this.#refundFailed(e, epoch, key, policy, amount));
    }
    return undefined;
  }

  #refundFailed(e: unknown, epoch: number, key: string, policy: Policy, amount: number): void {
    this.#backendDown(e, epoch);
    if (this.onBackendError === 'fallback') this.#fallbackBackend().refund(this.name, key, policy, amount);
  }

  #refundQuietly(backend: Backend, key: string, policy: Policy, amount: number): void {
    void this.#refundOn(backend, key, policy, amount);
  }
}

/** setTimeout's longest delay: a longer one would fire after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** arm runs `fn` after `ms` on `w.timer` (cleared with clearTimeout), however long `ms` is. */
function arm(w: Waiter, ms: number, fn: () => void): void {
  if (ms <= MAX_TIMER_MS) w.timer = setTimeout(fn, ms);
  else w.timer = setTimeout(() => arm(w, ms - MAX_TIMER_MS, fn), MAX_TIMER_MS);
}

function checkKey(key: unknown): asserts key is string {
  if (typeof key !== 'string') throw new InvalidArgumentError(`key must be a string (received ${describe(key)})`);
}

function checkCost(cost: unknown): number {
  if (cost === undefined) return 1;
  if (typeof cost !== 'number' || !Number.isFinite(cost) || cost <= 0) {
    throw new InvalidArgumentError(`cost must be a finite number > 0 (received ${describe(cost)})`);
  }
  return cost;
}

function checkMaxWait(ms: unknown): number {
  if (ms === undefined) return Number.POSITIVE_INFINITY;
  if (typeof ms !== 'number' || Number.isNaN(ms) || ms < 0) {
    throw new InvalidArgumentError(`maxWaitMs must be a number of ms >= 0 or Infinity (received ${describe(ms)})`);
  }
  return ms;
}

function checkSignal(signal: unknown): AbortSignal | undefined {
  if (signal === undefined) return undefined;
  if (typeof signal !== 'object' || signal === null || typeof (signal as AbortSignal).addEventListener !== 'function') {
    throw new InvalidArgumentError(`signal must be an AbortSignal (received ${describe(signal)})`);
  }
  return signal as AbortSignal;
}
