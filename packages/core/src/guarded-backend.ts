/**
 * GuardedBackend is what RateLimiter does when its backend fails: a circuit breaker per shard
 * (src/breaker.ts), the failure policy (`onBackendError`) deciding while a shard is down or
 * failing, and the bucket in this process's memory that `fallback` decides on.
 */
import type { Backend } from './backend.js';
import { MemoryBackend } from './backends/memory.js';
import { type Breaker, Breakers, unavailable } from './breaker.js';
import type { Decision, Reservation } from './bucket.js';
import type { BackendUnavailableError } from './errors.js';
import { FailureReport } from './failure-report.js';
import type { Waiter } from './key-queue.js';
import type { BackendErrorPolicy } from './options.js';
import type { Policy } from './policy.js';

/** The grant and the reservation of a call admitted by `fail-open`: nothing taken. */
const OPEN_DECISION: Decision = Object.freeze({ allowed: true, remaining: 0, retryAfterMs: 0, resetAfterMs: 0 });
const OPEN_RESERVATION: Reservation = Object.freeze({ ok: true, waitMs: 0, remaining: 0, resetAfterMs: 0 });

/** Where `fail-open` "takes" its reservations: a backend that admits everything and holds nothing. */
const OPEN_BACKEND: Backend = {
  kind: 'fail-open',
  tryTake: () => OPEN_DECISION,
  reserve: () => OPEN_RESERVATION,
  refund: () => undefined,
};

export class GuardedBackend {
  readonly backend: Backend;
  readonly #name: string;
  readonly #policy: BackendErrorPolicy;
  readonly #report: FailureReport;
  readonly #breakers: Breakers;
  /** The breaker of an unsharded backend, read without a lookup. */
  readonly #breaker: Breaker;
  readonly #shardOf: ((name: string, key: string) => string | undefined) | undefined;
  #fallback: MemoryBackend | undefined;

  constructor(
    name: string,
    backend: Backend,
    onBackendError: BackendErrorPolicy,
    probeIntervalMs: number,
    onError: ((e: unknown) => void) | undefined,
  ) {
    this.backend = backend;
    this.#name = name;
    this.#policy = onBackendError;
    this.#report = new FailureReport(
      `RateLimiter ${JSON.stringify(name)}`,
      backend.kind,
      onBackendError,
      probeIntervalMs,
      onError,
    );
    this.#breakers = new Breakers(probeIntervalMs);
    this.#breaker = this.#breakers.of(undefined);
    this.#shardOf = typeof backend.shardOf === 'function' ? backend.shardOf.bind(backend) : undefined;
  }

  /** The breaker of the shard holding `key`'s bucket (one in all unless a Redis Cluster). */
  breakerOf(key: string): Breaker {
    return this.#shardOf === undefined ? this.#breaker : this.#breakers.of(this.#shardOf(this.#name, key));
  }

  /** Whether `on` is where the failure policy decides (not the backend). */
  isDegraded(on: Backend | undefined): boolean {
    return on !== this.backend;
  }

  /** A backend call begun at `epoch` of `breaker` failed with `error`. */
  failed(breaker: Breaker, error: unknown, epoch: number): void {
    breaker.down(error, epoch);
    this.#report.failed(error);
  }

  /** Where refunds and decisions go while `key`'s shard is down: the fallback bucket or nowhere. */
  targetOf(key: string): Backend {
    return this.breakerOf(key).downUntil !== 0 ? this.#fallbackBackend() : this.backend;
  }

  /** A tryAcquire decided by the failure policy; rejects with BackendUnavailableError on `fail-closed`. */
  degradedTry(key: string, policy: Policy, cost: number, breaker: Breaker, error?: unknown): Promise<Decision> {
    switch (this.#policy) {
      case 'fail-open':
        return Promise.resolve({ allowed: true, remaining: 0, retryAfterMs: 0, resetAfterMs: 0 });
      case 'fail-closed':
        return Promise.reject(this.#unavailable(breaker, error));
      default:
        return Promise.resolve(this.#fallbackBackend().tryTake(this.#name, key, policy, cost));
    }
  }

  /** A reservation decided by the failure policy; `w.heldOn` says where it was taken. Throws on `fail-closed`. */
  degradedReserve(w: Waiter, maxWaitMs: number, breaker: Breaker, error?: unknown): Reservation {
    switch (this.#policy) {
      case 'fail-open':
        w.heldOn = OPEN_BACKEND;
        return OPEN_RESERVATION;
      case 'fail-closed':
        throw this.#unavailable(breaker, error);
      default: {
        const fb = this.#fallbackBackend();
        w.heldOn = fb;
        return fb.reserve(this.#name, w.key, w.policy, w.cost, maxWaitMs);
      }
    }
  }

  /** Gives `amount` back to `key`'s bucket on `backend`. Undefined when done synchronously; a returned promise never rejects. */
  refundOn(backend: Backend, key: string, policy: Policy, amount: number): Promise<void> | undefined {
    const breaker = backend === this.backend ? this.breakerOf(key) : undefined;
    const epoch = breaker?.epoch ?? 0;
    let r: void | Promise<void>;
    try {
      r = backend.refund(this.#name, key, policy, amount);
    } catch (e) {
      this.#refundFailed(breaker, e, epoch, key, policy, amount);
      return undefined;
    }
    if (r !== undefined && typeof (r as PromiseLike<void>).then === 'function') {
      return Promise.resolve(r).then(undefined, (e: unknown) =>
        this.#refundFailed(breaker, e, epoch, key, policy, amount),
      );
    }
    return undefined;
  }

  #refundFailed(
    breaker: Breaker | undefined,
    e: unknown,
    epoch: number,
    key: string,
    policy: Policy,
    amount: number,
  ): void {
    if (breaker !== undefined) this.failed(breaker, e, epoch);
    if (this.#policy === 'fallback') this.#fallbackBackend().refund(this.#name, key, policy, amount);
  }

  #fallbackBackend(): MemoryBackend {
    this.#fallback ??= new MemoryBackend();
    return this.#fallback;
  }

  /** The error of a call refused by `fail-closed`. */
  #unavailable(breaker: Breaker, error: unknown): BackendUnavailableError {
    return unavailable(this.backend.kind, breaker, error);
  }
}
