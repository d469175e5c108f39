/**
 * Checks of a call's arguments (key, cost, amount, maxWaitMs, signal). Each throws
 * {@link InvalidArgumentError} naming the argument, the constraint and the value received.
 */
import { InvalidArgumentError } from './errors.js';
import { describe } from './policy.js';

export function checkKey(key: unknown): asserts key is string {
  if (typeof key !== 'string') throw new InvalidArgumentError(`key must be a string (received ${describe(key)})`);
}

/** checkCost returns the cost of a call: 1 when undefined, else a finite number > 0. */
export function checkCost(cost: unknown): number {
  if (cost === undefined) return 1;
  if (typeof cost !== 'number' || !Number.isFinite(cost) || cost <= 0) {
    throw new InvalidArgumentError(`cost must be a finite number > 0 (received ${describe(cost)})`);
  }
  return cost;
}

/** checkAmount accepts a refund's amount: a finite number >= 0. */
export function checkAmount(amount: unknown): number {
  if (typeof amount !== 'number' || !Number.isFinite(amount) || amount < 0) {
    throw new InvalidArgumentError(`amount must be a finite number >= 0 (received ${describe(amount)})`);
  }
  return amount;
}

/** checkMaxWait returns a call's maxWaitMs: Infinity when undefined, else a number >= 0. */
export function checkMaxWait(ms: unknown): number {
  if (ms === undefined) return Number.POSITIVE_INFINITY;
  if (typeof ms !== 'number' || Number.isNaN(ms) || ms < 0) {
    throw new InvalidArgumentError(`maxWaitMs must be a number of ms >= 0 or Infinity (received ${describe(ms)})`);
  }
  return ms;
}

export function checkSignal(signal: unknown): AbortSignal | undefined {
  if (signal === undefined) return undefined;
  if (typeof signal !== 'object' || signal === null || typeof (signal as AbortSignal).addEventListener !== 'function') {
    throw new InvalidArgumentError(`signal must be an AbortSignal (received ${describe(signal)})`);
  }
  return signal as AbortSignal;
}
