import type { MaybePromise } from '../backend.js';
import { AbortedError, MaxWaitExceededError } from '../errors.js';
import type { LimiterMetrics, Outcome } from '../metrics.js';
import type { Policy } from '../policy.js';
import { shift } from '../fifo.js';
import { arm } from '../timer.js';
import { DEFERRED, GRANTED, type PoolAnswer } from './pool-math.js';
import type { Pools } from './pools.js';

/** What a SharedLimiter's acquire resolves with. */
export interface SharedGrant {
  /** Ms this call waited (its key's queue, its turn and the pool's bucket together). */
  waitedMs: number;
  /** Whole tokens left in the pool when the call was admitted (Infinity: the pool has no limit). */
  remaining: number;
}

/** A decision and the pools that made it (a refund goes back there). */
export interface Answered {
  a: PoolAnswer;
  on: Pools;
}

/** What the queues need from their limiter: asking the pools, and giving tokens back. */
export interface QueueHost {
  /** One turn for `w`; throws (or rejects) with the error its caller must see. */
  ask(w: Waiter, maxWaitMs: number, more: boolean): MaybePromise<Answered>;
  giveBack(on: Pools, w: Waiter): void;
  /**
   * Confirms `w`'s grant on `on` at its start: 0 to start now, else ms until the provider's
   * pause ends. Never rejects (a failure answers 0).
   */
  confirm(on: Pools, w: Waiter): MaybePromise<number>;
  /** Whether `on` is the failure policy's (a grant there counts as `fallback`). */
  degraded(on: Pools | undefined): boolean;
}

/** A caller of `acquire` waiting its turn on one (pool, key). */
export interface Waiter {
  readonly pool: string;
  readonly key: string;
  readonly cost: number;
  readonly policy: Policy;
  readonly weight: number;
  readonly start: number;
  /** Absolute deadline (performance.now ms), or Infinity. */
  readonly deadline: number;
  readonly resolve: (g: SharedGrant) => void;
  readonly reject: (e: unknown) => void;
  readonly signal: AbortSignal | undefined;
  /**
   * queued; asking (a turn in flight); deferred (to ask again); holding (granted, waiting to
   * start); confirming (its start reached, asking the pool whether a pause holds it).
   */
  state: 'queued' | 'asking' | 'deferred' | 'holding' | 'confirming' | 'done';
  heldOn: Pools | undefined;
  remaining: number;
  admitAt: number;
  /** Whether it confirms with the pool at its start (it waited CONFIRM_MIN_MS or more, or a pause held it). */
  confirm: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  onAbort: (() => void) | undefined;
}

/** The callers of one (pool, key) in this process, in arrival order; only the head asks. */
interface KeyQueue {
  readonly id: string;
  readonly pool: string;
  readonly waiters: Waiter[];
  next: number;
  head: Waiter | undefined;
  pumping: boolean;
  queuedCount: number;
  queuedCost: number;
}

const now = (): number => performance.now();

/**
 * CONFIRM_MIN_MS: a grant that waits at least this long (ms) for its start confirms with the pool
 * at that start (one more round trip). A shorter wait starts unconfirmed: only a pause observed
 * within it could be missed, and confirming it would add a round trip to most grants of a busy
 * pool (whose grants wait a few ms each).
 */
export const CONFIRM_MIN_MS = 20;

/** queueId is the map key of (pool, key). */
export function queueId(pool: string, key: string): string {
  return `${pool}\u0000${key}`;
}

/**
 * FairQueues holds a SharedLimiter's local FIFO queue per (pool, key). The head of each queue
 * alone holds a turn in the pool: it asks, is granted (then waits for its start), or is told
 * when to ask again; when it starts, the next caller becomes the head and asks.
 *
 * Not RateLimiter's KeyQueues (key-queue.ts), though the FIFO and the pump are alike: a head
 * here may be refused for now with nothing taken (DEFERRED: not its key's turn in the pool) and
 * asks again on a timer; it tells the pool whether callers wait behind it (`more`); the
 * provider's retry-after holds heads already granted (holdUntil); and a grant is not taken
 * again when admitted late, as KeyQueues does on a local bucket. Folding those into KeyQueues
 * would put pool-only states on RateLimiter's hot path.
 */
export class FairQueues {
  readonly #host: QueueHost;
  readonly #metrics: LimiterMetrics;
  readonly #queues = new Map<string, KeyQueue>();

  /** `metrics` counts every caller's outcome and wait, and the callers waiting. */
  constructor(host: QueueHost, metrics: LimiterMetrics) {
    this.#host = host;
    this.#metrics = metrics;
  }

  get size(): number {
    return this.#queues.size;
  }

  has(id: string): boolean {
    return this.#queues.size !== 0 && this.#queues.has(id);
  }

  /** The number of callers of this process waiting on (pool, key), the head included. */
  queued(id: string): number {
    const q = this.#queues.get(id);
    return q === undefined ? 0 : q.queuedCount + (q.head !== undefined ? 1 : 0);
  }

  /** A lower bound of the wait of a new caller of `cost` behind (pool, key)'s queue. */
  estimate(id: string, cost: number, policy: Policy): number {
    const q = this.#queues.get(id);
    if (q === undefined) return 0;
    const h = q.head;
    const headMs =
      h !== undefined && (h.state === 'holding' || h.state === 'confirming') ? Math.max(0, h.admitAt - now()) : 0;
    return Math.ceil(headMs + (cost + q.queuedCost) / policy.ratePerMs);
  }

  /**
   * enqueue queues a caller; `first`, when given, is its turn already answered (or in flight):
   * it becomes the head at once (the caller found no queue).
   */
  enqueue(w: Waiter, first?: MaybePromise<Answered>): void {
    const id = queueId(w.pool, w.key);
    let q = this.#queues.get(id);
    if (q === undefined) {
      q = { id, pool: w.pool, waiters: [], next: 0, head: undefined, pumping: false, queuedCount: 0, queuedCost: 0 };
      this.#queues.set(id, q);
    }
    const queue = q;
    this.#metrics.queue(1);
    if (w.signal !== undefined) {
      w.onAbort = () => this.#abort(queue, w);
      w.signal.addEventListener('abort', w.onAbort, { once: true });
    }
    if (first !== undefined) {
      q.head = w;
      w.state = 'asking';
      this.#handle(q, w, first);
      return;
    }
    q.waiters.push(w);
    q.queuedCount++;
    q.queuedCost += w.cost;
    if (w.deadline !== Number.POSITIVE_INFINITY) {
      arm(w, w.deadline - w.start, () => {
        if (w.state !== 'queued') return;
        this.#finish(queue, w);
        this.#settled('timeout');
        const est = this.estimate(id, w.cost, w.policy);
        w.reject(new MaxWaitExceededError(w.key, Math.max(1, est), w.deadline - w.start));
        this.#pumpSoon(queue);
      });
    }
    if (q.head === undefined) this.#pumpSoon(q);
  }

  /**
   * holdUntil keeps every granted head of `pool` in this process from starting before `at`
   * (performance.now ms): the provider's retry-after reaches reservations already granted.
   */
  holdUntil(pool: string, at: number): void {
    for (const q of this.#queues.values()) {
      const h = q.head;
      if (q.pool === pool && h !== undefined && h.state === 'confirming') {
        // #confirmed arms the wait when the pool answers.
        if (h.admitAt < at) h.admitAt = at;
        continue;
      }
      if (q.pool !== pool || h === undefined || h.state !== 'holding' || h.admitAt >= at) continue;
      clearTimeout(h.timer);
      h.admitAt = at;
      h.confirm = true;
      arm(h, Math.ceil(at - now()), () => this.#admit(q, h));
    }
  }

  #pumpSoon(q: KeyQueue): void {
    if (q.pumping) return;
    q.pumping = true;
    try {
      while (q.head === undefined) {
        const w = shift(q);
        if (w === undefined) {
          if (this.#queues.get(q.id) === q) this.#queues.delete(q.id);
          return;
        }
        if (w.state !== 'queued') continue;
        if (--q.queuedCount === 0) q.queuedCost = 0;
        else q.queuedCost -= w.cost;
        if (w.timer !== undefined) {
          clearTimeout(w.timer);
          w.timer = undefined;
        }
        q.head = w;
        this.#ask(q, w);
      }
    } finally {
      q.pumping = false;
    }
  }

  #ask(q: KeyQueue, w: Waiter): void {
    w.state = 'asking';
    const maxWait = w.deadline === Number.POSITIVE_INFINITY ? -1 : Math.max(0, Math.floor(w.deadline - now()));
    let r: MaybePromise<Answered>;
    try {
      r = this.#host.ask(w, maxWait, q.queuedCount > 0);
    } catch (e) {
      this.#fail(q, w, e);
      return;
    }
    this.#handle(q, w, r);
  }

  #handle(q: KeyQueue, w: Waiter, r: MaybePromise<Answered>): void {
    if (r instanceof Promise) {
      r.then(
        (x) => this.#answered(q, w, x),
        (e: unknown) => this.#fail(q, w, e),
      );
    } else this.#answered(q, w, r);
  }

  #answered(q: KeyQueue, w: Waiter, { a, on }: Answered): void {
    if (w.state === 'done') {
      // Aborted while its turn was in flight: give a grant back, then let the next one go.
      if (a.status === GRANTED) this.#host.giveBack(on, w);
      if (q.head === w) q.head = undefined;
      this.#pumpSoon(q);
      return;
    }
    if (a.status === GRANTED) {
      w.heldOn = on;
      w.remaining = a.remaining;
      if (a.ms <= 0) {
        this.#admit(q, w);
        return;
      }
      w.state = 'holding';
      w.admitAt = now() + a.ms;
      w.confirm = a.ms >= CONFIRM_MIN_MS;
      arm(w, a.ms, () => this.#admit(q, w));
      return;
    }
    if (a.status === DEFERRED) {
      w.state = 'deferred';
      arm(w, a.ms, () => {
        w.timer = undefined;
        if (w.state === 'deferred') this.#ask(q, w);
      });
      return;
    }
    this.#finish(q, w);
    this.#settled('timeout');
    w.reject(new MaxWaitExceededError(w.key, Math.max(1, a.ms), w.deadline - w.start));
    this.#pumpSoon(q);
  }

  #fail(q: KeyQueue, w: Waiter, e: unknown): void {
    if (w.state !== 'done') {
      this.#finish(q, w);
      this.#settled('rejected');
      w.reject(e);
    } else if (q.head === w) q.head = undefined;
    this.#pumpSoon(q);
  }

  #admit(q: KeyQueue, w: Waiter): void {
    if (w.state === 'done') return;
    if (w.state === 'holding') {
      // Timers may fire up to ~1 ms early by performance.now(): never start before the grant.
      const early = w.admitAt - now();
      if (early > 0) {
        arm(w, Math.ceil(early), () => this.#admit(q, w));
        return;
      }
      // It waited for its start: another process may have paused the pool since it was granted.
      if (w.confirm) {
        this.#confirm(q, w);
        return;
      }
    }
    this.#start(q, w);
  }

  #confirm(q: KeyQueue, w: Waiter): void {
    w.state = 'confirming';
    w.timer = undefined;
    let r: MaybePromise<number>;
    try {
      r = this.#host.confirm(w.heldOn as Pools, w);
    } catch {
      r = 0;
    }
    if (r instanceof Promise)
      r.then(
        (ms) => this.#confirmed(q, w, ms),
        () => this.#confirmed(q, w, 0),
      );
    else this.#confirmed(q, w, r);
  }

  /** The pool's answer to `w`'s confirmation: start, or wait out the pause and confirm again. */
  #confirmed(q: KeyQueue, w: Waiter, ms: number): void {
    if (w.state !== 'confirming') return; // aborted meanwhile: its tokens went back then
    const t = now();
    if (ms > 0 && t + ms > w.admitAt) w.admitAt = t + ms;
    if (w.admitAt > t) {
      w.state = 'holding';
      arm(w, Math.ceil(w.admitAt - t), () => this.#admit(q, w));
      return;
    }
    this.#start(q, w);
  }

  /** `w` starts: it leaves the queue, resolves, and the next caller of its key becomes the head. */
  #start(q: KeyQueue, w: Waiter): void {
    const waitedMs = now() - w.start;
    this.#finish(q, w);
    this.#metrics.queue(-1);
    this.#metrics.granted(this.#host.degraded(w.heldOn) ? 'fallback' : 'allowed', waitedMs);
    w.resolve({ waitedMs, remaining: w.remaining });
    this.#pumpSoon(q);
  }

  #abort(q: KeyQueue, w: Waiter): void {
    if (w.state === 'done') return;
    const state = w.state;
    const reason = w.signal?.reason;
    if (state === 'asking') {
      // Its turn is in flight: #answered gives a grant back and moves the queue on.
      w.state = 'done';
      this.#cleanup(w);
      this.#settled('aborted');
      w.reject(new AbortedError(w.key, reason));
      return;
    }
    if ((state === 'holding' || state === 'confirming') && w.heldOn !== undefined) this.#host.giveBack(w.heldOn, w);
    this.#finish(q, w);
    this.#settled('aborted');
    w.reject(new AbortedError(w.key, reason));
    this.#pumpSoon(q);
  }

  /** A caller stopped waiting with `outcome` (not a grant). */
  #settled(outcome: Outcome): void {
    this.#metrics.queue(-1);
    this.#metrics.decision(outcome);
  }

  #finish(q: KeyQueue, w: Waiter): void {
    if (w.state === 'queued') {
      if (--q.queuedCount === 0) q.queuedCost = 0;
      else q.queuedCost -= w.cost;
    }
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
}
