/**
 * The circuit breaker in front of a backend: after a failure, calls skip the backend (no timeout
 * each) until a probe succeeds. {@link Breakers} keeps one per shard, so that in a Redis Cluster
 * one failing node sends only the keys it owns to the failure policy.
 */
import { BackendUnavailableError, TollgateError } from './errors.js';

/** Breaker is the state of one shard of a backend (one Redis node, or the whole backend). */
export class Breaker {
  /** 0 while the shard is trusted; else when (performance.now ms) to probe it next. */
  downUntil = 0;
  /**
   * Counts the breaker's changes (opened, or closed again). A call notes it when it goes to the
   * backend; its failure counts only if the breaker has not changed since (an older call's
   * failure is stale). A counter, not a time: no clock read on the hot path.
   */
  epoch = 0;
  /**
   * The backend's own error behind the outage, while the breaker is open: the `cause` of the
   * errors `fail-closed` decides. A Tollgate error a backend wraps around it is unwrapped, and
   * one with nothing inside (a timeout, "the connection is reconnecting") does not replace the
   * client's error of the same outage, which says more.
   */
  lastError: unknown;
  #probing = false;
  readonly #probeIntervalMs: number;

  constructor(probeIntervalMs: number) {
    this.#probeIntervalMs = probeIntervalMs;
  }

  /** Whether a call should go to the backend now: the breaker is closed, or it is the probe's turn. */
  allow(): boolean {
    return this.downUntil === 0 || this.shouldProbe();
  }

  /** Whether the caller may try the backend, the breaker being open: one probe per interval. */
  shouldProbe(): boolean {
    if (this.#probing || performance.now() < this.downUntil) return false;
    this.#probing = true;
    return true;
  }

  /** The backend answered: close the breaker. */
  up(): void {
    if (this.downUntil !== 0) {
      this.downUntil = 0;
      this.#probing = false;
      this.epoch++;
      this.lastError = undefined;
    }
  }

  /**
   * A call begun at epoch `epoch` failed: open the breaker, or, when it is open, schedule the next
   * probe. A failure of a call begun before the last change says nothing about the backend now (a
   * timeout still running when a probe succeeded, or one of many calls in flight when the backend
   * died), so it changes neither.
   */
  down(error: unknown, epoch: number): void {
    if (epoch === this.epoch) {
      if (this.downUntil === 0) this.epoch++;
      this.downUntil = performance.now() + this.#probeIntervalMs;
      this.#probing = false;
    }
    if (this.downUntil === 0) return;
    const own = backendCause(error);
    if (!(own instanceof TollgateError) || this.lastError === undefined || this.lastError instanceof TollgateError)
      this.lastError = own;
  }
}

/** Shards whose breakers are remembered; beyond it, closed ones are forgotten (they hold nothing). */
const MAX_SHARDS = 1024;

/** Breakers keeps a {@link Breaker} per shard name; `undefined` is the one shard of an unsharded backend. */
export class Breakers {
  readonly #probeIntervalMs: number;
  readonly #single: Breaker;
  readonly #byShard = new Map<string, Breaker>();

  constructor(probeIntervalMs: number) {
    this.#probeIntervalMs = probeIntervalMs;
    this.#single = new Breaker(probeIntervalMs);
  }

  of(shard: string | undefined): Breaker {
    if (shard === undefined) return this.#single;
    let b = this.#byShard.get(shard);
    if (b === undefined) {
      if (this.#byShard.size >= MAX_SHARDS) this.#forgetClosed();
      b = new Breaker(this.#probeIntervalMs);
      this.#byShard.set(shard, b);
    }
    return b;
  }

  /** Drops closed breakers; if every one is open (a cluster of 1024 dead nodes), the oldest. */
  #forgetClosed(): void {
    for (const [shard, b] of this.#byShard) if (b.downUntil === 0) this.#byShard.delete(shard);
    if (this.#byShard.size >= MAX_SHARDS) {
      const oldest = this.#byShard.keys().next().value as string;
      this.#byShard.delete(oldest);
    }
  }
}

/** backendCause is the error inside Tollgate's wrappers: a backend's BackendUnavailableError's `cause`, if any. */
export function backendCause(error: unknown): unknown {
  let e = error;
  while (e instanceof TollgateError && e.cause !== undefined && e.cause !== e) e = e.cause;
  return e;
}

/**
 * unavailable is the error of a call refused by `fail-closed`: its `cause` is the backend's own
 * error (the Redis client's, when it gave one), and its message says it.
 */
export function unavailable(kind: string, breaker: Breaker, error: unknown): BackendUnavailableError {
  const cause = breaker.lastError ?? backendCause(error);
  const why = cause instanceof Error ? `: ${cause.message}` : '';
  return new BackendUnavailableError(`the ${kind} backend is unavailable${why}`, cause);
}
