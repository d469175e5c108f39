/**
 * runLoad starts `processes` children running test/workers/try-load.ts with the same arguments
 * (they start together at `args.startAt`) and sums what they report.
 */
import { lastJson, runTs } from './spawn.ts';

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
  const results = await Promise.all(
    Array.from({ length: processes }, () => runTs('test/workers/try-load.ts', [JSON.stringify(args)]).then((r) => lastJson<LoadResult>(r))),
  );
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
