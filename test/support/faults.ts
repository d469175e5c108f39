/**
 * Helpers for the fault tests: a guard that fails a file on any unhandled rejection, a backend
 * wrapper that records when the real backend answered, a load generator that records how long
 * every call took to settle and how, and a gauge of how late this process's timers ran.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Backend, Decision, Policy, Reservation } from '@tollgate/core';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * failOnUnhandledRejections: every test of the calling file fails if a promise rejection went
 * unhandled while it ran (Tollgate must never leak one, whatever the backend does).
 */
export function failOnUnhandledRejections(): void {
  const seen: unknown[] = [];
  const onRejection = (reason: unknown) => {
    seen.push(reason);
  };
  beforeAll(() => {
    process.on('unhandledRejection', onRejection);
  });
  afterEach(async () => {
    // Rejections surface after a macrotask turn: let them.
    await sleep(20);
    const leaked = seen.splice(0);
    expect(leaked, `unhandled rejections: ${leaked.map(String).join('; ')}`).toEqual([]);
  });
  afterAll(() => {
    process.off('unhandledRejection', onRejection);
  });
}

/**
 * Watched wraps a backend and records when (performance.now ms) it answered each call: the
 * instants at which the real backend, not a failure policy, decided.
 */
export class Watched implements Backend {
  readonly kind: string;
  readonly answers: number[] = [];
  readonly failures: number[] = [];
  constructor(readonly inner: Backend) {
    this.kind = inner.kind;
  }
  #track<T>(r: T | Promise<T>): T | Promise<T> {
    if (!(r instanceof Promise)) {
      this.answers.push(performance.now());
      return r;
    }
    return r.then(
      (v) => {
        this.answers.push(performance.now());
        return v;
      },
      (e: unknown) => {
        this.failures.push(performance.now());
        throw e;
      },
    );
  }
  tryTake(name: string, key: string, policy: Policy, cost: number): Decision | Promise<Decision> {
    return this.#track(this.inner.tryTake(name, key, policy, cost));
  }
  reserve(
    name: string,
    key: string,
    policy: Policy,
    cost: number,
    maxWaitMs: number,
  ): Reservation | Promise<Reservation> {
    return this.#track(this.inner.reserve(name, key, policy, cost, maxWaitMs));
  }
  refund(name: string, key: string, policy: Policy, amount: number): void | Promise<void> {
    return this.#track(this.inner.refund(name, key, policy, amount));
  }
  /** The first answer at or after `t`, or undefined. */
  firstAnswerAfter(t: number): number | undefined {
    return this.answers.find((a) => a >= t);
  }
}

/** One call made by the load generator. */
export interface Call {
  /** performance.now() when it started. */
  start: number;
  /** Ms until it settled. */
  ms: number;
  outcome: 'allowed' | 'rejected' | 'error';
  error?: unknown;
}

/**
 * load runs `concurrency` loops calling `call` until `stop()` says so (each loop pauses `gapMs`
 * between calls, so a synchronous fallback cannot starve the timers), and returns every call.
 */
export async function load(
  call: (worker: number) => Promise<boolean>,
  options: { concurrency: number; stop: () => boolean; gapMs?: number },
): Promise<Call[]> {
  const calls: Call[] = [];
  const gap = options.gapMs ?? 2;
  const loop = async (worker: number) => {
    while (!options.stop()) {
      const start = performance.now();
      try {
        const ok = await call(worker);
        calls.push({ start, ms: performance.now() - start, outcome: ok ? 'allowed' : 'rejected' });
      } catch (error) {
        calls.push({ start, ms: performance.now() - start, outcome: 'error', error });
      }
      await sleep(gap);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, (_, i) => loop(i)));
  return calls;
}

/** The p-th percentile (0..100) of `xs`. */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] as number;
}

/** Settles with `p`, or rejects after `ms` naming `what` (a test must never hang on a lost call). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

/**
 * timerLag measures how late this process's timers fire from now on (CPU starvation on a busy
 * machine, GC, a long synchronous stretch): no deadline can be kept closer than that, so the
 * fault tests add it to their deadline bounds. `maxMs()` is the worst lag so far, in ms.
 */
export function timerLag(): { maxMs(): number; stop(): void } {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  return { maxMs: () => h.max / 1e6, stop: () => h.disable() };
}
