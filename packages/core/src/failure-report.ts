/** FailureReport hands a limiter's backend failures to its `onError`. */
export class FailureReport {
  readonly #onError: ((error: unknown) => void) | undefined;

  constructor(onError: ((error: unknown) => void) | undefined) {
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

  /** A backend call failed with `error`: to `onError`. Never throws. */
  failed(error: unknown): void {
    this.toHook(error);
  }
}
