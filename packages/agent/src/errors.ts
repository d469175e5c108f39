import { TollgateError } from '@tollgate/core';

/**
 * QueueFullError: a user's per-user queue (see `perUser` in `throttleOpenAI`) already holds
 * `maxQueued` waiting calls, so the new call is rejected at once. Nothing already queued is
 * dropped. It is thrown before the HTTP attempt starts, so the OpenAI client's retry loop does
 * not retry it: the caller sees this error, not an `APIConnectionError`.
 */
export class QueueFullError extends TollgateError {
  /** The user whose queue is full. */
  readonly user: string;
  /** Calls that may run at once for this user. */
  readonly concurrency: number;
  /** Calls that may wait for this user. */
  readonly maxQueued: number;

  constructor(user: string, concurrency: number, maxQueued: number) {
    const shown = user.length > 64 ? `${user.slice(0, 61)}...` : user;
    super(
      'ERR_TOLLGATE_QUEUE_FULL',
      `the queue of user ${JSON.stringify(shown)} is full: ${concurrency} in flight and ${maxQueued} waiting (perUser.maxQueued ${maxQueued})`,
    );
    this.user = user;
    this.concurrency = concurrency;
    this.maxQueued = maxQueued;
  }
}

/** isQueueFullError reports whether `err` is a {@link QueueFullError} (by its `code`). */
export const isQueueFullError = (err: unknown): err is QueueFullError =>
  typeof err === 'object' && err !== null && (err as { code?: unknown }).code === 'ERR_TOLLGATE_QUEUE_FULL';
