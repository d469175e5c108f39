/**
 * The demo's output: a per-tenant table redrawn in place on a terminal (log-update + cli-table3),
 * periodic plain lines elsewhere (CI, a pipe), and the final table of achieved rate vs quota.
 * Tables stay within 80 columns.
 */
import Table from 'cli-table3';
import { createLogUpdate } from 'log-update';
import { type TenantStats, outcome } from './stats.ts';
import { WEIGHTS } from './tiers.ts';

export interface ViewOptions {
  /** Plain lines instead of redrawing in place. */
  plain: boolean;
  /** ms between two reports in plain mode. @default 2000 */
  plainEveryMs?: number;
  out?: NodeJS.WriteStream;
}

/** Frame is what the view shows at one moment. */
export interface Frame {
  readonly stats: readonly TenantStats[];
  readonly elapsedMs: number;
  /** What the run is doing now, e.g. "new tasks until 8 s". */
  readonly status: string;
  /** Whether shares are measured yet (after the warm-up). */
  readonly warm: boolean;
  /** Lines under the table (the metrics' summary with --metrics). */
  readonly footer: readonly string[];
}

export interface View {
  /** Shows the current counts (called often; plain mode prints only every `plainEveryMs`). */
  update(frame: Frame): void;
  /** Leaves the last live frame on screen and restores the cursor. */
  done(): void;
}

const ms = (v: number) => Math.round(v).toString();
const num = (v: number) => (Number.isInteger(v) ? String(v) : v.toFixed(2));
export const pct = (v: number) => `${(100 * v).toFixed(1)}%`;

function table(head: string[], plain: boolean): Table.Table {
  return new Table({
    head,
    style: plain ? { head: [], border: [], compact: true } : { head: ['cyan'], border: ['grey'], compact: true },
  });
}

/** shares returns each tenant's share of the org's 2xx since the warm-up, and its fair share by weight. */
export function shares(stats: readonly TenantStats[]): { share: number; fair: number }[] {
  const ok = stats.reduce((n, s) => n + s.httpAfterWarmup.ok, 0);
  const weights = stats.reduce((n, s) => n + s.weight, 0);
  return stats.map((s) => ({ share: ok > 0 ? s.httpAfterWarmup.ok / ok : 0, fair: s.weight / weights }));
}

const avgAttemptWait = (s: TenantStats) => (s.attemptsAdmitted > 0 ? s.attemptWaitTotalMs / s.attemptsAdmitted : 0);

export function createView(opts: ViewOptions): View {
  const out = opts.out ?? process.stdout;
  if (opts.plain) {
    const every = opts.plainEveryMs ?? 2000;
    let nextAt = 0;
    return {
      update(f) {
        if (f.elapsedMs < nextAt) return;
        nextAt = f.elapsedMs + every;
        const t = `[${(f.elapsedMs / 1000).toFixed(1).padStart(5)}s]`;
        out.write(`${t} ${f.status}\n`);
        const sh = shares(f.stats);
        f.stats.forEach((s, i) => {
          const { share, fair } = sh[i] as { share: number; fair: number };
          const shareText = f.warm ? `${pct(share).padStart(6)} (fair ${pct(fair)})` : `  -    (fair ${pct(fair)})`;
          out.write(
            `${t} ${s.tenant.padEnd(9)} ${s.tier.padEnd(10)} ×${s.weight}  waiting ${String(s.modelWaiting).padStart(2)}  requests ok ${String(s.http.ok).padStart(4)}  share ${shareText}  wait avg ${ms(avgAttemptWait(s)).padStart(5)} ms  429s ${s.http.rateLimited} (after 1 s: ${s.httpAfterWarmup.rateLimited})  tool calls ${s.admitted}\n`,
          );
        });
        for (const line of f.footer) out.write(`${t} ${line}\n`);
      },
      done() {},
    };
  }
  const log = createLogUpdate(out);
  return {
    update(f) {
      const t = table(
        ['Tenant', 'Tier', 'Wait-\ning', 'OK', 'Wait ms\navg/max', 'Share\n(fair)', '429s\nall/>1s'],
        false,
      );
      const sh = shares(f.stats);
      let modelCalls = 0;
      let toolCalls = 0;
      f.stats.forEach((s, i) => {
        const { share, fair } = sh[i] as { share: number; fair: number };
        modelCalls += s.modelCalls;
        toolCalls += s.admitted;
        t.push([
          s.tenant,
          s.tier,
          s.modelWaiting,
          s.http.ok,
          `${ms(avgAttemptWait(s))}/${ms(s.attemptMaxWaitMs)}`,
          `${f.warm ? pct(share) : '-'} (${Math.round(100 * fair)}%)`,
          `${s.http.rateLimited}/${s.httpAfterWarmup.rateLimited}`,
        ]);
      });
      const head = `${(f.elapsedMs / 1000).toFixed(1).padStart(4)} s · ${f.status} · ${modelCalls} model calls, ${toolCalls} tool calls`;
      const legend = [
        "Waiting: model calls waiting for their turn. OK: the provider's 2xx answers.",
        `Share: of the 2xx since 1 s; fair: by weight (${Object.entries(WEIGHTS)
          .map(([t, w]) => `${t} ${w}`)
          .join(', ')}).`,
        "429s: the provider's, all and since 1 s.",
      ];
      log([head, t.toString(), ...legend, ...f.footer].join('\n'));
    },
    done() {
      log.done();
    },
  };
}

/**
 * summaryTable: per tenant, the tool calls admitted and the achieved rate against the quota's rate:
 * over the whole window, and after the first burst (what the refill rate alone admitted).
 */
export function summaryTable(stats: readonly TenantStats[], plain: boolean): string {
  const t = table(
    ['Tenant', 'Tier', 'Quota/s\n(burst)', 'Tool\ncalls', 'Achieved /s\n(after burst)', 'Avg\nwait ms', 'Max\nwait ms'],
    plain,
  );
  for (const s of stats) {
    const o = outcome(s);
    t.push([
      s.tenant,
      s.tier,
      `${num(o.quotaPerS)} (${num(s.quota.capacity)})`,
      s.admitted,
      `${o.achievedPerS.toFixed(2)} (${o.afterBurstPerS.toFixed(2)})`,
      ms(o.avgWaitMs),
      ms(s.maxWaitMs),
    ]);
  }
  return t.toString();
}

/** boundLine shows one tenant's check: admitted ≤ burst + rate × T, and its waits. */
export function boundLine(s: TenantStats): string {
  const o = outcome(s);
  const ok = o.withinBound;
  return `${s.tenant} (${s.tier}): ${s.admitted} ${ok ? '≤' : '>'} ${num(s.quota.capacity)} + ${num(o.quotaPerS)}/s × ${o.windowS.toFixed(2)} s = ${o.bound.toFixed(1)} ${ok ? '✓' : '✗ over quota'}  wait avg ${ms(o.avgWaitMs)}, max ${ms(s.maxWaitMs)} ms`;
}
