/**
 * Errors thrown by Tollgate. Every error is a {@link TollgateError} with a stable `code`, so callers
 * can branch on `err.code` (or the `is…` guards) without `instanceof` across package copies.
 */

/** Stable machine-readable codes of every Tollgate error. */
export type TollgateErrorCode =
  | 'ERR_TOLLGATE_INVALID_OPTIONS'
  | 'ERR_TOLLGATE_INVALID_ARGUMENT'
  | 'ERR_TOLLGATE_COST_EXCEEDS_CAPACITY'
  | 'ERR_TOLLGATE_MAX_WAIT_EXCEEDED'
  | 'ERR_TOLLGATE_ABORTED'
  | 'ERR_TOLLGATE_BACKEND_UNAVAILABLE'
  | 'ERR_TOLLGATE_BACKEND_TIMEOUT'
  | 'ERR_TOLLGATE_QUEUE_FULL';

/** TollgateError is the base class of every error Tollgate throws. */
export class TollgateError extends Error {
  /** A stable code, e.g. `ERR_TOLLGATE_MAX_WAIT_EXCEEDED`. */
  readonly code: TollgateErrorCode;

  constructor(code: TollgateErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** InvalidOptionsError: options given to a constructor (or a policy) failed validation. */
export class InvalidOptionsError extends TollgateError {
  /** Each problem: the option's path, what it must be, and what was received. */
  readonly issues: readonly { path: string; message: string }[];

  constructor(message: string, issues: readonly { path: string; message: string }[] = []) {
    super('ERR_TOLLGATE_INVALID_OPTIONS', message);
    this.issues = issues;
  }
}

/** InvalidArgumentError: a call's argument (key, cost, amount, maxWaitMs) is not acceptable. */
export class InvalidArgumentError extends TollgateError {
  constructor(message: string) {
    super('ERR_TOLLGATE_INVALID_ARGUMENT', message);
  }
}

/** CostExceedsCapacityError: the cost is above the bucket's capacity, so it can never be served. */
export class CostExceedsCapacityError extends TollgateError {
  readonly key: string;
  readonly cost: number;
  readonly capacity: number;

  constructor(key: string, cost: number, capacity: number) {
    super(
      'ERR_TOLLGATE_COST_EXCEEDS_CAPACITY',
      `cost ${cost} exceeds the bucket capacity ${capacity} for key ${JSON.stringify(preview(key))}: it could never be served`,
    );
    this.key = key;
    this.cost = cost;
    this.capacity = capacity;
  }
}

/**
 * MaxWaitExceededError: `acquire` was given `maxWaitMs` and the call would wait longer.
 * No token was taken. `retryAfterMs` estimates when trying again could succeed.
 */
export class MaxWaitExceededError extends TollgateError {
  readonly key: string;
  /** Milliseconds after which the same call is expected to be admitted without waiting. */
  readonly retryAfterMs: number;
  readonly maxWaitMs: number;

  constructor(key: string, retryAfterMs: number, maxWaitMs: number) {
    super(
      'ERR_TOLLGATE_MAX_WAIT_EXCEEDED',
      `key ${JSON.stringify(preview(key))} would wait ${Math.ceil(retryAfterMs)} ms, more than maxWaitMs ${maxWaitMs}`,
    );
    this.key = key;
    this.retryAfterMs = retryAfterMs;
    this.maxWaitMs = maxWaitMs;
  }
}

/** AbortedError: the caller's AbortSignal fired while it waited; its tokens were given back. */
export class AbortedError extends TollgateError {
  readonly key: string;

  constructor(key: string, reason?: unknown) {
    super('ERR_TOLLGATE_ABORTED', `waiting for key ${JSON.stringify(preview(key))} was aborted`, {
      cause: reason,
    });
    this.key = key;
  }
}

/**
 * BackendUnavailableError: the storage backend failed and the limiter's policy is `fail-closed`
 * (its `cause` is the backend's error). {@link RedisBackend} also fails with it, at once, while
 * its ioredis connection is known to be down; the limiter then applies `onBackendError`.
 */
export class BackendUnavailableError extends TollgateError {
  constructor(message: string, cause?: unknown) {
    super('ERR_TOLLGATE_BACKEND_UNAVAILABLE', message, { cause });
  }
}

/** BackendTimeoutError: the backend did not answer within its `timeoutMs`. */
export class BackendTimeoutError extends TollgateError {
  readonly timeoutMs: number;

  constructor(timeoutMs: number) {
    super('ERR_TOLLGATE_BACKEND_TIMEOUT', `the backend did not answer within timeoutMs ${timeoutMs}`);
    this.timeoutMs = timeoutMs;
  }
}

function hasCode(err: unknown, code: TollgateErrorCode): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/** isTollgateError reports whether `err` is any Tollgate error. */
export function isTollgateError(err: unknown): err is TollgateError {
  return (
    err instanceof TollgateError ||
    (err instanceof Error &&
      typeof (err as { code?: unknown }).code === 'string' &&
      (err as unknown as { code: string }).code.startsWith('ERR_TOLLGATE_'))
  );
}
export const isInvalidOptionsError = (err: unknown): err is InvalidOptionsError =>
  hasCode(err, 'ERR_TOLLGATE_INVALID_OPTIONS');
export const isInvalidArgumentError = (err: unknown): err is InvalidArgumentError =>
  hasCode(err, 'ERR_TOLLGATE_INVALID_ARGUMENT');
export const isCostExceedsCapacityError = (err: unknown): err is CostExceedsCapacityError =>
  hasCode(err, 'ERR_TOLLGATE_COST_EXCEEDS_CAPACITY');
export const isMaxWaitExceededError = (err: unknown): err is MaxWaitExceededError =>
  hasCode(err, 'ERR_TOLLGATE_MAX_WAIT_EXCEEDED');
export const isAbortedError = (err: unknown): err is AbortedError => hasCode(err, 'ERR_TOLLGATE_ABORTED');
export const isBackendUnavailableError = (err: unknown): err is BackendUnavailableError =>
  hasCode(err, 'ERR_TOLLGATE_BACKEND_UNAVAILABLE');
export const isBackendTimeoutError = (err: unknown): err is BackendTimeoutError =>
  hasCode(err, 'ERR_TOLLGATE_BACKEND_TIMEOUT');

/** Keys may be 10 kB of tenant text: messages show at most 64 characters of them. */
function preview(key: string): string {
  return key.length > 64 ? `${key.slice(0, 61)}...` : key;
}
