/**
 * The measuring loop: every contender of a scenario runs the same number of operations per round,
 * rounds interleave the contenders (A B C, A B C, …) so that drift of the machine (thermal, other
 * processes, GC) hits all of them alike, and each contender's figure is the median of its rounds.
 *
 * tinybench and mitata time one call at a time (or their own batches) and run one task to the end
 * before the next; neither interleaves contenders nor drives 256 calls in flight, so the loop is
 * ours and small. Each contender writes its own loop: a shared loop calling `op()` would be a
 * polymorphic call site and would slow the fastest contenders most.
 */

/** A contender runs `n` operations and resolves when they are done. */
export type Run = (n: number) => Promise<void> | void;

export interface Contender {
  /** Shown in the table: 'Tollgate', 'rate-limiter-flexible', 'inline Map bucket (awaited)', … */
  name: string;
  /** 'tollgate', 'peer' or 'ceiling': how the ratio column reads it. */
  role: 'tollgate' | 'peer' | 'ceiling';
  run: Run;
  /** Run this share of the scenario's ops per round (slow peers); ops/s is per op all the same. */
  share?: number;
}

export interface Scenario {
  id: string;
  title: string;
  /** Operations per round. */
  ops: number;
  contenders: Contender[];
  /** Called once before the warm-up (e.g. to fill a bucket or empty it). */
  setup?: () => Promise<void> | void;
}

export interface Measured {
  name: string;
  role: Contender['role'];
  /** Median ops/s over the rounds. */
  opsPerSec: number;
  /** Every round's ops/s, in order. */
  rounds: number[];
}

export interface ScenarioResult {
  id: string;
  title: string;
  ops: number;
  results: Measured[];
}

export interface RunOptions {
  rounds: number;
  /** Warm-up rounds per contender, not recorded. */
  warmup: number;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

async function once(c: Contender, ops: number): Promise<number> {
  const n = Math.max(1, Math.round(ops * (c.share ?? 1)));
  const run = c.run;
  const t0 = process.hrtime.bigint();
  await run(n);
  const ns = Number(process.hrtime.bigint() - t0);
  return (n * 1e9) / ns;
}

/** runScenario measures every contender of `s`, interleaved, and returns their medians. */
export async function runScenario(s: Scenario, o: RunOptions): Promise<ScenarioResult> {
  await s.setup?.();
  for (let w = 0; w < o.warmup; w++) for (const c of s.contenders) await once(c, s.ops);
  const rounds = new Map<Contender, number[]>(s.contenders.map((c) => [c, []]));
  for (let r = 0; r < o.rounds; r++) {
    // Rotate the order each round so no contender always runs right after the same one.
    for (let i = 0; i < s.contenders.length; i++) {
      const c = s.contenders[(i + r) % s.contenders.length] as Contender;
      (rounds.get(c) as number[]).push(await once(c, s.ops));
    }
  }
  return {
    id: s.id,
    title: s.title,
    ops: s.ops,
    results: s.contenders.map((c) => {
      const xs = rounds.get(c) as number[];
      return { name: c.name, role: c.role, opsPerSec: median(xs), rounds: xs };
    }),
  };
}

/**
 * inFlight runs `n` calls of `op`, keeping `concurrency` of them in flight at once (each worker
 * starts its next call when its previous one settles). Used for the Redis scenarios only, where a
 * call costs microseconds and the shared call site does not matter.
 */
export async function inFlight(n: number, concurrency: number, op: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++;
      await op(i);
    }
  };
  const workers: Promise<void>[] = [];
  for (let w = 0; w < Math.min(concurrency, n); w++) workers.push(worker());
  await Promise.all(workers);
}
