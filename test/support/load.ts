/**
 * runLoad starts `processes` children running test/workers/try-load.ts with the same arguments,
 * together (each waits for all to be connected: runTogether), and sums what they report.
 */
import { lastJson, runTogether } from './spawn.ts';

/** What one child of test/workers/try-load.ts reports (times are Date.now() ms). */
export interface LoadResult {
  admitted: number;
  rejected: number;
  errors: number;
  /** When its first call started, its last call started, its last call ended. */
  first: number;
  lastStart: number;
  last: number;
  errorSample: string;
}

/** The children's totals; `first` is the earliest start, `last` / `lastStart` the latest. */
export interface LoadTotals {
  admitted: number;
  rejected: number;
  errors: number;
  first: number;
  lastStart: number;
  last: number;
  errorSamples: string;
  results: LoadResult[];
}

export async function runLoad(processes: number, args: Record<string, unknown>): Promise<LoadTotals> {
  const children = await runTogether(
    'test/workers/try-load.ts',
    Array.from({ length: processes }, () => [JSON.stringify(args)]),
  );
  const results = children.map((r) => lastJson<LoadResult>(r));
  const sum = (f: (r: LoadResult) => number) => results.reduce((n, r) => n + f(r), 0);
  return {
    admitted: sum((r) => r.admitted),
    rejected: sum((r) => r.rejected),
    errors: sum((r) => r.errors),
    first: Math.min(...results.map((r) => r.first)),
    lastStart: Math.max(...results.map((r) => r.lastStart)),
    last: Math.max(...results.map((r) => r.last)),
    errorSamples: results.map((r) => r.errorSample).join(' '),
    results,
  };
}

/**
 * admissionBounds: what a run of runLoad on a fresh key may admit, from the times the children
 * actually called (not the nominal duration); `policy.rate` is per second.
 *
 * upper = b + r·(last − first) + 1: the bucket is full at the first call and every admission is
 * decided between the first call's start and the last call's end; +1 for Date.now()'s whole ms.
 *
 * lower = 0.9 × r·(lastStart − first): a rejected loop asks again ≤ 5 ms later, so a token is
 * taken soon after it appears; refill is lost only while the bucket is full, i.e. after b/r ms
 * (250 ms here) with nobody asking, and up to b tokens may be left when the last calls start. So
 * the bound drops b, and allows stalls of the whole machine over 10% of the window (a 3× slower
 * machine still asks every ~15 ms, far under b/r).
 */
export function admissionBounds(
  policy: { rate: number; capacity: number },
  t: Pick<LoadTotals, 'first' | 'lastStart' | 'last'>,
): { upper: number; lower: number } {
  return {
    upper: policy.capacity + (policy.rate * (t.last - t.first)) / 1000 + 1,
    lower: (0.9 * policy.rate * (t.lastStart - t.first)) / 1000,
  };
}
