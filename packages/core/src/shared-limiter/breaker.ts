/**
 * Breaker remembers that the backend failed: while open, calls skip the backend (no timeout
 * each) and one call every `probeIntervalMs` tries it again; the first success closes it.
 */
export class Breaker {
  readonly probeIntervalMs: number;
  #downUntil = 0;
  #probing = false;
  /** Counts opens and closes: a failure of a call begun before the last change is stale. */
  #epoch = 0;
  /** The last failure: the `cause` of errors decided while open. */
  lastError: unknown;

  constructor(probeIntervalMs: number) {
    this.probeIntervalMs = probeIntervalMs;
  }

  get epoch(): number {
    return this.#epoch;
  }

  /** Whether a call should go to the backend now (closed, or the probe's turn). */
  allow(): boolean {
    if (this.#downUntil === 0) return true;
    if (this.#probing || performance.now() < this.#downUntil) return false;
    this.#probing = true;
    return true;
  }

  up(): void {
    if (this.#downUntil !== 0) {
      this.#downUntil = 0;
      this.#probing = false;
      this.#epoch++;
    }
  }

  /** A call begun at `epoch` failed with `error`. */
  down(error: unknown, epoch: number): void {
    if (epoch === this.#epoch) {
      if (this.#downUntil === 0) this.#epoch++;
      this.#downUntil = performance.now() + this.probeIntervalMs;
      this.#probing = false;
    }
    this.lastError = error;
  }
}
