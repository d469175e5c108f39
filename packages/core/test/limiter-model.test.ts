/**
 * A seeded model-based test of RateLimiter's wait queue on the memory backend: random programs of
 * acquire / tryAcquire / refund / abort / advance-time on fake timers, checked against what the
 * README promises. Set TOLLGATE_SEED to replay a run; a failure shrinks to a few steps.
 */
import { AbortedError, type Grant, MaxWaitExceededError, MemoryBackend, RateLimiter } from '@tollgate/core';
import fc from 'fast-check';
import { afterEach, expect, test, vi } from 'vitest';

afterEach(() => {
  vi.useRealTimers();
});

const KEYS = ['a', 'b'] as const;

interface Call {
  readonly key: string;
  readonly cost: number;
  readonly start: number;
  readonly maxWaitMs: number;
  readonly controller: AbortController;
  /** Position among this key's acquire calls, in arrival order. */
  readonly arrival: number;
  abortedAt?: number;
  outcome?:
    | { kind: 'granted'; at: number; order: number; grant: Grant }
    | { kind: 'rejected'; at: number; error: unknown };
}

interface Real {
  limiter: RateLimiter;
  calls: Call[];
  /** Tokens granted per key: [instant, tokens]. */
  grants: Map<string, [number, number][]>;
  refunds: Map<string, [number, number][]>;
  settled: number;
}

type Model = Record<string, never>;

const now = () => performance.now();
const push = (m: Map<string, [number, number][]>, key: string, at: number, n: number) => {
  const list = m.get(key) ?? [];
  list.push([at, n]);
  m.set(key, list);
};

class Acquire implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly key: string,
    readonly cost: number,
    readonly maxWaitMs: number | undefined,
  ) {}
  check = () => true;
  async run(_m: Model, r: Real): Promise<void> {
    const controller = new AbortController();
    const call: Call = {
      key: this.key,
      cost: this.cost,
      start: now(),
      maxWaitMs: this.maxWaitMs ?? Number.POSITIVE_INFINITY,
      controller,
      arrival: r.calls.filter((c) => c.key === this.key).length,
    };
    r.calls.push(call);
    const options =
      this.maxWaitMs === undefined
        ? { cost: this.cost, signal: controller.signal }
        : { cost: this.cost, signal: controller.signal, maxWaitMs: this.maxWaitMs };
    r.limiter.acquire(this.key, options).then(
      (grant) => {
        call.outcome = { kind: 'granted', at: now(), order: r.settled++, grant };
        push(r.grants, this.key, now(), this.cost);
      },
      (error: unknown) => {
        call.outcome = { kind: 'rejected', at: now(), error };
      },
    );
    await Promise.resolve();
  }
  toString = () =>
    `acquire(${this.key}, ${this.cost}${this.maxWaitMs === undefined ? '' : `, maxWait ${this.maxWaitMs}`})`;
}

class TryAcquire implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly key: string,
    readonly cost: number,
  ) {}
  check = () => true;
  async run(_m: Model, r: Real): Promise<void> {
    const d = await r.limiter.tryAcquire(this.key, { cost: this.cost });
    if (d.allowed) push(r.grants, this.key, now(), this.cost);
  }
  toString = () => `tryAcquire(${this.key}, ${this.cost})`;
}

class Refund implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly key: string,
    readonly amount: number,
  ) {}
  check = () => true;
  async run(_m: Model, r: Real): Promise<void> {
    push(r.refunds, this.key, now(), this.amount);
    await r.limiter.refund(this.key, this.amount);
  }
  toString = () => `refund(${this.key}, ${this.amount})`;
}

class Abort implements fc.AsyncCommand<Model, Real> {
  constructor(readonly pick: number) {}
  check = () => true;
  async run(_m: Model, r: Real): Promise<void> {
    const pending = r.calls.filter((c) => c.outcome === undefined && c.abortedAt === undefined);
    const call = pending[this.pick % Math.max(1, pending.length)];
    if (call === undefined) return;
    call.abortedAt = now();
    call.controller.abort();
    await Promise.resolve();
  }
  toString = () => `abort(#${this.pick})`;
}

class Advance implements fc.AsyncCommand<Model, Real> {
  constructor(readonly ms: number) {}
  check = () => true;
  async run(): Promise<void> {
    await vi.advanceTimersByTimeAsync(this.ms);
  }
  toString = () => `advance(${this.ms})`;
}

// Mostly one key (queues form), sometimes the other (keys are independent).
const key = fc.constantFrom('a', 'a', 'a', 'b');
const policyArb = fc.record({
  rate: fc.integer({ min: 10, max: 1000 }),
  capacity: fc.oneof(fc.integer({ min: 1, max: 10 }), fc.double({ min: 0.5, max: 20, noNaN: true })),
});

function commands(capacity: number) {
  // Whole-bucket and half-bucket costs often: they make the queue's edge cases likely.
  const cost = fc.oneof(
    fc.constant(capacity),
    fc.constant(capacity / 2),
    fc
      .double({ min: 0.01, max: capacity, noNaN: true })
      .map((c) => Math.min(capacity, Math.round(c * 100) / 100 || 0.01)),
  );
  return fc.commands(
    [
      fc
        .tuple(key, cost, fc.option(fc.integer({ min: 0, max: 300 }), { nil: undefined, freq: 3 }))
        .map(([k, c, m]) => new Acquire(k, c, m)),
      fc.tuple(key, cost).map(([k, c]) => new Acquire(k, c, undefined)),
      fc.tuple(key, cost).map(([k, c]) => new TryAcquire(k, c)),
      fc.tuple(key, cost).map(([k, c]) => new Refund(k, c)),
      fc.nat(20).map((i) => new Abort(i)),
      fc
        .oneof(
          fc.integer({ min: 0, max: 100 }),
          fc.double({ min: 0, max: 3, noNaN: true }).map((ms) => Math.round(ms * 1000) / 1000),
        )
        .map((ms) => new Advance(ms)),
    ],
    { maxCommands: 30 },
  );
}

/** The most tokens a key granted in any window between two of its grants, over what b + r·T + refunds allow. */
function worstExcess(
  grants: [number, number][],
  refunds: [number, number][],
  capacity: number,
  ratePerMs: number,
): string | undefined {
  const g = [...grants].sort((x, y) => x[0] - y[0]);
  for (let i = 0; i < g.length; i++) {
    let sum = 0;
    const from = (g[i] as [number, number])[0];
    for (let j = i; j < g.length; j++) {
      const [to, n] = g[j] as [number, number];
      sum += n;
      const refunded = refunds.filter(([at]) => at >= from && at <= to).reduce((s, [, a]) => s + a, 0);
      const bound = capacity + ratePerMs * (to - from) + refunded;
      if (sum > bound + 1e-6) return `${sum} tokens granted in [${from}, ${to}] ms, bound ${bound}`;
    }
  }
  return undefined;
}

const seed = Number(process.env.TOLLGATE_SEED ?? Math.floor(Math.random() * 2 ** 31));

test(`random programs of acquire / tryAcquire / refund / abort / time keep the bucket's promises (seed ${seed})`, async () => {
  await fc.assert(
    fc.asyncProperty(
      policyArb.chain((p) => fc.tuple(fc.constant(p), commands(p.capacity))),
      async ([p, cmds]) => {
        vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
        try {
          const limiter = new RateLimiter({
            backend: new MemoryBackend({ clock: () => performance.now() }),
            policy: { rate: p.rate, per: '1s', capacity: p.capacity },
          });
          const real: Real = { limiter, calls: [], grants: new Map(), refunds: new Map(), settled: 0 };
          await fc.asyncModelRun(() => ({ model: {}, real }), cmds);
          // Nothing is left hanging: with time, every call settles and every queue empties.
          await vi.advanceTimersByTimeAsync(1e6);
          for (const k of KEYS) expect(limiter.queued(k)).toBe(0);
          for (const c of real.calls) {
            expect(c.outcome, `call ${c.key}#${c.arrival}`).toBeDefined();
            const o = c.outcome as NonNullable<Call['outcome']>;
            // An aborted call is never granted once its signal fired.
            if (c.abortedAt !== undefined && o.at >= c.abortedAt) {
              expect(o.kind).toBe('rejected');
              if (o.kind === 'rejected') expect(o.error).toBeInstanceOf(AbortedError);
            }
            // maxWaitMs is honoured: granted within it, or refused.
            if (o.kind === 'granted') expect(o.at - c.start).toBeLessThanOrEqual(c.maxWaitMs);
            if (o.kind === 'rejected' && !(o.error instanceof AbortedError))
              expect(o.error).toBeInstanceOf(MaxWaitExceededError);
          }
          for (const k of KEYS) {
            // FIFO per key: granted acquires resolve in arrival order.
            const granted = real.calls.filter((c) => c.key === k && c.outcome?.kind === 'granted');
            const orders = granted.map((c) => (c.outcome as { order: number }).order);
            expect(orders).toEqual([...orders].sort((x, y) => x - y));
            // Over any window T, at most b + r·T tokens plus what was refunded in it.
            expect(
              worstExcess(real.grants.get(k) ?? [], real.refunds.get(k) ?? [], p.capacity, p.rate / 1000),
            ).toBeUndefined();
          }
        } finally {
          vi.useRealTimers();
        }
      },
    ),
    { seed, numRuns: 300 },
  );
}, 120_000);
