/**
 * FailureReport hands a limiter's backend failures to its `onError`; with none given, it warns
 * once, on the first failure (process.emitWarning, code {@link BACKEND_WARNING_CODE}), so that a
 * mistyped Redis URL is not silent: it names the limiter, the backend and the error, and says
 * what `onBackendError` does from now on.
 */
import { backendCause } from './breaker.js';

/** The `code` of the warning printed on a limiter's first backend failure when it has no `onError`. */
export const BACKEND_WARNING_CODE = 'TOLLGATE_BACKEND_UNAVAILABLE';

const WHAT_NOW: Readonly<Record<string, string>> = {
  'fail-open': 'admits every call, with no limit',
  'fail-closed': 'fails every call with BackendUnavailableError',
  fallback: "decides calls on buckets in this process's memory (limits hold per process, not across processes)",
};

export class FailureReport {
  readonly #limiter: string;
  readonly #backend: string;
  readonly #policy: string;
  readonly #probeIntervalMs: number;
  readonly #onError: ((error: unknown) => void) | undefined;
  #warned = false;

  /** `limiter` names it ('RateLimiter "llm-tokens"'); `backend` is the backend's kind. */
  constructor(
    limiter: string,
    backend: string,
    onBackendError: string,
    probeIntervalMs: number,
    onError: ((error: unknown) => void) | undefined,
  ) {
    this.#limiter = limiter;
    this.#backend = backend;
    this.#policy = onBackendError;
    this.#probeIntervalMs = probeIntervalMs;
    this.#onError = onError;
  }

  /** Hands `error` to `onError` if given; never throws. Returns whether there was one. */
  toHook(error: unknown): boolean {
    if (this.#onError === undefined) return false;
    try {
      this.#onError(error);
    } catch {
      // A reporting hook must not break admission.
    }
    return true;
  }

  /** A backend call failed with `error`: to `onError`, or the warning the first time. Never throws. */
  failed(error: unknown): void {
    if (this.toHook(error) || this.#warned) return;
    this.#warned = true;
    const cause = backendCause(error);
    const why = cause instanceof Error ? cause.message : String(cause);
    const redis =
      this.#backend === 'redis' || this.#backend === 'hybrid' ? ' Is the Redis URL right, and Redis reachable?' : '';
    process.emitWarning(
      `${this.#limiter}: the ${this.#backend} backend failed (${why}).${redis} Until it answers again (tried every ${this.#probeIntervalMs} ms), onBackendError '${this.#policy}' ${WHAT_NOW[this.#policy] ?? 'decides'}. Pass onError to the limiter to handle backend failures yourself; this warning is printed once per limiter.`,
      { type: 'TollgateWarning', code: BACKEND_WARNING_CODE },
    );
  }
}
