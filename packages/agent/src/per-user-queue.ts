import { LimiterMetrics } from '@tollgate/core/internal';
import PQueue from 'p-queue';
import { QueueFullError } from './errors.js';

/** PerUserOptions bounds each user's calls in this process. */
export interface PerUserOptions {
  /**
   * Calls of one user that may be in flight at once (waiting for tokens, or running).
   * @default Infinity
   */
  concurrency?: number;
  /**
   * Calls of one user that may wait for a free slot. One more is rejected at once with
   * {@link QueueFullError}; nothing already queued is dropped. `0` means: never wait for a slot.
   * @default Infinity
   */
  maxQueued?: number;
}

/** DEFAULT_PER_USER holds the defaults of {@link PerUserOptions}. */
export const DEFAULT_PER_USER = { concurrency: Number.POSITIVE_INFINITY, maxQueued: Number.POSITIVE_INFINITY } as const;

/** A user's slot: call `release` once the call is over (idempotent). */
export type Release = () => void;

interface Entry {
  readonly queue: PQueue;
  /** Calls holding or waiting for a slot; the entry is freed when it reaches 0. */
  holders: number;
}

/**
 * PerUserQueues keeps one p-queue per user, created on first use and freed as soon as the user
 * has no call queued or in flight, so memory follows active users, not all users ever seen.
 */
export class PerUserQueues {
  readonly concurrency: number;
  readonly maxQueued: number;
  readonly #entries = new Map<string, Entry>();
  /** OpenTelemetry: calls refused with QueueFullError (`queue_full`), and calls waiting for a slot. */
  readonly #metrics = new LimiterMetrics('per-user', 'memory');

  /** `options` are validated by the caller (see pipeline/options.ts). */
  constructor(options: PerUserOptions = {}) {
    this.concurrency = options.concurrency ?? DEFAULT_PER_USER.concurrency;
    this.maxQueued = options.maxQueued ?? DEFAULT_PER_USER.maxQueued;
  }

  /**
   * enter resolves once `user` has a free slot, with the function that gives it back. It rejects
   * at once with {@link QueueFullError} when the user's queue is full (unless `force`, used for
   * retries of a call already admitted), and with the signal's reason when `signal` fires first.
   */
  enter(user: string, options: { signal?: AbortSignal | undefined; force?: boolean } = {}): Promise<Release> {
    let e = this.#entries.get(user);
    if (e === undefined) {
      e = { queue: new PQueue({ concurrency: this.concurrency }), holders: 0 };
      this.#entries.set(user, e);
    }
    const entry = e;
    if (!options.force && entry.queue.pending >= this.concurrency && entry.queue.size >= this.maxQueued) {
      if (entry.holders === 0) this.#entries.delete(user);
      this.#metrics.decision('queue_full');
      return Promise.reject(new QueueFullError(user, this.concurrency, this.maxQueued));
    }
    entry.holders++;
    const metrics = this.#metrics;
    metrics.queue(1);
    return new Promise<Release>((resolve, reject) => {
      let waiting = true;
      let release: () => void = () => {};
      const done = new Promise<void>((r) => {
        release = r;
      });
      entry.queue
        .add(
          () => {
            waiting = false;
            metrics.queue(-1);
            resolve(() => release());
            return done;
          },
          options.signal !== undefined ? { signal: options.signal } : {},
        )
        .catch((e: unknown) => {
          if (waiting) {
            waiting = false;
            metrics.queue(-1);
          }
          reject(e);
        })
        .finally(() => {
          entry.holders--;
          if (entry.holders === 0 && this.#entries.get(user) === entry) this.#entries.delete(user);
        });
    });
  }

  /** The calls of `user` waiting for a slot, and those holding one. */
  stats(user: string): { queued: number; inFlight: number } {
    const e = this.#entries.get(user);
    return e === undefined ? { queued: 0, inFlight: 0 } : { queued: e.queue.size, inFlight: e.queue.pending };
  }

  /** The number of users with a queue right now (idle users have none). */
  get users(): number {
    return this.#entries.size;
  }
}
