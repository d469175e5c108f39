/**
 * The per-key wait queue: in this process, the callers waiting on one key form a FIFO queue, and
 * only its head holds a reservation in the backend. When the head is admitted, the next caller
 * reserves; an aborted head gives its tokens back and the queue moves up at once.
 *
 * The queue knows nothing of backends' failures: it asks its {@link QueueHost} (the limiter) to
 * take and give back reservations, and the host decides where they go.
 */
import type { Backend } from './backend.js';
import type { Reservation } from './bucket.js';
import { AbortedError, MaxWaitExceededError } from './errors.js';
import type { LimiterMetrics, Outcome } from './metrics.js';
import type { Grant } from './options.js';
import type { Policy } from './policy.js';
import { shift } from './fifo.js';
import { arm } from './timer.js';

/** A caller of `acquire` waiting its turn on one key. */
export interface Waiter {
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
  /** Where the reservation was taken, to give it back there; set by the host. */
  heldOn: Backend | undefined;
  /** Whether the reservation was answered synchronously (a local bucket: cheap to take again). */
  heldSync: boolean;
  /** Tokens left when reserved. */
  remaining: number;
  /** Whether it waited out its reservation on a timer (so its tokens must be taken again when admitted). */
  timed: boolean;
  /** When a holding waiter is admitted (performance.now ms). */
  admitAt: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  onAbort: (() => void) | undefined;
}

/** The callers waiting on one key in this process, in arrival order; only the head reserves. */
export interface KeyQueue {
  readonly key: string;
  readonly waiters: Waiter[];
  /** Index of the first waiter not yet handed to the backend. */
  next: number;
  /** The waiter holding (or taking) the key's reservation, if any. */
  head: Waiter | undefined;
  /** True while the pump runs for this queue (admissions inside it must not recurse into it). */
  pumping: boolean;
  /** How many waiters are in state 'queued', and their costs summed (for wait estimates). */
  queuedCount: number;
  queuedCost: number;
}

/** What the queues need from their owner. */
export interface QueueHost {
  /**
   * Reserve `w.cost` for `w` (at most `maxWaitMs`; negative: no limit), setting `w.heldOn` to the
   * backend that took it. Throws (or rejects) with the error `w` must fail with.
   */
  reserve(w: Waiter, maxWaitMs: number): Reservation | Promise<Reservation>;
  /**
   * Give back `amount` to the bucket of `w`'s reservation, where it was taken; never throws, and
   * a returned promise never rejects.
   */
  refund(w: Waiter, amount: number): Promise<void> | undefined;
  /** Whether `w`'s reservation was taken by the failure policy (its grant counts as `fallback`). */
  degraded(w: Waiter): boolean;
}

/** The head's reservation, when the caller took it before queueing (the limiter's fast path). */
export type HeadStart =
  | { backend: Backend; reservation: Reservation }
  | { pending: (w: Waiter) => Promise<Reservation> };

const now = (): number => performance.now();

/** KeyQueues holds the wait queue of every key that has callers waiting in this process. */
export class KeyQueues {
  readonly #host: QueueHost;
  readonly #metrics: LimiterMetrics;
  readonly #queues = new Map<string, KeyQueue>();

  /** `metrics` counts every caller's outcome and wait, and the callers waiting. */
  constructor(host: QueueHost, metrics: LimiterMetrics) {
    this.#host = host;
    this.#metrics = metrics;
  }

  /** The number of keys with callers waiting. */
  get size(): number {
    return this.#queues.size;
  }

  get(key: string): KeyQueue | undefined {
    return this.#queues.size === 0 ? undefined : this.#queues.get(key);
  }

  /** The number of callers of this process waiting on `key` (the head included). */
  queued(key: string): number {
    const q = this.get(key);
    return q === undefined ? 0 : q.queuedCount + (q.head !== undefined ? 1 : 0);
  }

  /**
   * A lower bound on how long a new caller of cost `cost` would wait behind this queue: the head's
   * remaining hold, then every queued cost and its own at the policy's rate.
   */
  estimate(q: KeyQueue, cost: number, policy: Policy): number {
    const head = q.head;
    const headMs = head !== undefined && head.state === 'holding' ? Math.max(0, head.admitAt - now()) : 0;
    return Math.ceil(headMs + (cost + q.queuedCost) / policy.ratePerMs);
  }

  /**
   * Queues a caller of `key`; resolves when it is admitted. With `head`, the caller is the head
   * already (its reservation taken, or in flight).
   */
  enqueue(
    key: string,
    cost: number,
    policy: Policy,
    maxWaitMs: number,
    signal: AbortSignal | undefined,
    head?: HeadStart,
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
        heldSync: false,
        remaining: 0,
        timed: false,
        admitAt: 0,
        timer: undefined,
        onAbort: undefined,
      };
      this.#metrics.queue(1);
      let q = this.get(key);
      if (q === undefined) {
        q = { key, waiters: [], next: 0, head: undefined, pumping: false, queuedCount: 0, queuedCost: 0 };
        this.#queues.set(key, q);
      }
      const queue = q;
      if (signal !== undefined) {
        w.onAbort = () => this.#abort(queue, w);
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      if (head !== undefined) {
        queue.head = w;
        w.state = 'reserving';
        if ('reservation' in head) {
          w.heldOn = head.backend;
          w.heldSync = true;
          this.#reserved(queue, w, head.reservation);
        } else {
          head.pending(w).then(
            (r) => this.#reserved(queue, w, r),
            (e: unknown) => this.#failed(queue, w, e),
          );
        }
        return;
      }
      queue.waiters.push(w);
      queue.queuedCount++;
      queue.queuedCost += cost;
      if (maxWaitMs !== Number.POSITIVE_INFINITY) {
        arm(w, maxWaitMs, () => {
          if (w.state !== 'queued') return;
          this.#finish(queue, w);
          this.#settled('timeout');
          reject(new MaxWaitExceededError(key, Math.max(1, this.estimate(queue, cost, policy)), maxWaitMs));
          this.#pumpSoon(queue);
        });
      }
      if (queue.head === undefined) this.#pumpSoon(queue);
    });
  }

  /**
   * `key`'s queue if its head holds a reservation taken on `backend`: a refund to that bucket
   * must go through {@link reReserve}.
   */
  holdingOn(key: string, backend: Backend): KeyQueue | undefined {
    const q = this.get(key);
    const w = q?.head;
    return w !== undefined && w.state === 'holding' && w.heldOn === backend ? q : undefined;
  }

  /**
   * Refunds `amount` to the bucket whose reservation the head holds, together with that
   * reservation, and has the head reserve again: the refund serves the head as early as it
   * would have had the head come after it, instead of coming on top of the debt the head waits
   * out (a token bucket hands out at most its capacity at once).
   */
  reReserve(q: KeyQueue, amount: number): Promise<void> | undefined {
    const w = q.head as Waiter;
    clear(w);
    w.state = 'reserving';
    const refunded = this.#host.refund(w, w.cost + amount);
    this.#reserveHead(q, w, true);
    return refunded;
  }

  /** Hands the key's reservation to the next waiter in line, while the head is free. */
  #pump(q: KeyQueue): void {
    if (q.pumping) return;
    q.pumping = true;
    try {
      while (q.head === undefined) {
        const w = shift(q);
        if (w === undefined) {
          if (this.#queues.get(q.key) === q) this.#queues.delete(q.key);
          return;
        }
        if (w.state !== 'queued') continue;
        // Its signal fired, its own listener not run yet (callers sharing one signal: the first
        // listener's refund moves the queue up): it must not be granted.
        if (w.signal?.aborted) {
          this.#abort(q, w);
          continue;
        }
        unqueue(q, w);
        clear(w);
        q.head = w;
        w.state = 'reserving';
        this.#reserveHead(q, w, false);
      }
    } finally {
      q.pumping = false;
    }
  }

  /**
   * The head asks for its reservation; the answer comes now or later. `again`: it held one and
   * gave it back, so its maxWaitMs was honoured already (no limit this time).
   */
  #reserveHead(q: KeyQueue, w: Waiter, again: boolean): void {
    let r: Reservation | Promise<Reservation>;
    try {
      const maxWait = again || w.deadline === Number.POSITIVE_INFINITY ? -1 : Math.max(0, w.deadline - now());
      r = this.#host.reserve(w, maxWait);
    } catch (e) {
      this.#failed(q, w, e);
      return;
    }
    if (r instanceof Promise) {
      w.heldSync = false;
      r.then(
        (res) => this.#reserved(q, w, res),
        (e: unknown) => this.#failed(q, w, e),
      );
      return;
    }
    w.heldSync = true;
    this.#reserved(q, w, r);
  }

  /** The head's reservation came back: admit it now, after its wait, or refuse it. */
  #reserved(q: KeyQueue, w: Waiter, r: Reservation): void {
    if (w.state === 'done') {
      // Aborted while the reservation was in flight: give it back, then let the next one go.
      if (r.ok) this.#host.refund(w, w.cost);
      if (q.head === w) q.head = undefined;
      this.#pumpSoon(q);
      return;
    }
    if (!r.ok) {
      this.#finish(q, w);
      this.#settled('timeout');
      w.reject(new MaxWaitExceededError(w.key, r.waitMs, w.deadline - w.start));
      this.#pumpSoon(q);
      return;
    }
    w.remaining = r.remaining;
    w.state = 'holding';
    w.admitAt = now() + r.waitMs;
    w.timed = r.waitMs > 0;
    if (r.waitMs <= 0) this.#admit(q, w);
    else arm(w, r.waitMs, () => this.#admit(q, w));
  }

  /** The backend failed the head's reservation with `error` (the host's decision): it fails. */
  #failed(q: KeyQueue, w: Waiter, error: unknown): void {
    if (w.state === 'done') {
      if (q.head === w) q.head = undefined;
    } else {
      this.#finish(q, w);
      this.#settled('rejected');
      w.reject(error);
    }
    this.#pumpSoon(q);
  }

  #admit(q: KeyQueue, w: Waiter): void {
    if (w.state === 'done') return;
    if (w.signal?.aborted) {
      this.#abort(q, w);
      return;
    }
    const t = now();
    // Node's timers may fire up to ~1 ms early by performance.now(): never admit before the
    // bucket has repaid the debt, or a caller could run a hair over its quota.
    const early = w.admitAt - t;
    if (early > 0) {
      arm(w, Math.ceil(early), () => this.#admit(q, w));
      return;
    }
    // The timer fires after the debt is repaid (waits are whole ms; the event loop lags), and
    // the bucket refills meanwhile: beside this grant, those tokens would make more than the
    // capacity at once. So the head takes its tokens again now, from a bucket capped at its
    // capacity, where that is cheap (a local bucket); a round trip to Redis per admission would
    // cost more than the fraction of a token it saves.
    if (w.timed && w.heldSync) {
      w.timed = false;
      w.state = 'reserving';
      this.#host.refund(w, w.cost);
      this.#reserveHead(q, w, true);
      return;
    }
    this.#grant(q, w, t);
  }

  #grant(q: KeyQueue, w: Waiter, t: number): void {
    this.#finish(q, w);
    const waitedMs = t - w.start;
    this.#metrics.queue(-1);
    this.#metrics.granted(this.#host.degraded(w) ? 'fallback' : 'allowed', waitedMs);
    w.resolve({ waitedMs, remaining: w.remaining });
    this.#pumpSoon(q);
  }

  /** A caller stopped waiting with `outcome` (not a grant). */
  #settled(outcome: Outcome): void {
    this.#metrics.queue(-1);
    this.#metrics.decision(outcome);
  }

  /** Move the queue on; inside the pump loop this is a no-op, as the loop goes on by itself. */
  #pumpSoon(q: KeyQueue): void {
    if (!q.pumping) this.#pump(q);
  }

  #abort(q: KeyQueue, w: Waiter): void {
    if (w.state === 'done') return;
    const state = w.state;
    const reason = w.signal?.reason;
    if (state === 'reserving') {
      // The reservation is in flight; #reserved gives it back and moves the queue on.
      w.state = 'done';
      clear(w);
      this.#settled('aborted');
      w.reject(new AbortedError(w.key, reason));
      return;
    }
    // Give the tokens back first: the refund reaches the backend before the next reservation.
    if (state === 'holding') this.#host.refund(w, w.cost);
    this.#finish(q, w);
    this.#settled('aborted');
    w.reject(new AbortedError(w.key, reason));
    this.#pumpSoon(q);
  }

  /** Mark `w` done, release the head if it held it, and clear its timer and listener. */
  #finish(q: KeyQueue, w: Waiter): void {
    if (w.state === 'queued') unqueue(q, w);
    w.state = 'done';
    if (q.head === w) q.head = undefined;
    clear(w);
    if (w.onAbort !== undefined && w.signal !== undefined) {
      w.signal.removeEventListener('abort', w.onAbort);
      w.onAbort = undefined;
    }
  }
}

function unqueue(q: KeyQueue, w: Waiter): void {
  if (--q.queuedCount === 0) q.queuedCost = 0;
  else q.queuedCost -= w.cost;
}

function clear(w: Waiter): void {
  if (w.timer !== undefined) {
    clearTimeout(w.timer);
    w.timer = undefined;
  }
}
