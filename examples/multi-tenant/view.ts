/**
 * The demo's output: a per-tenant table redrawn in place on a terminal (log-update + cli-table3),
 * periodic plain lines elsewhere (CI, a pipe), and the final table of achieved rate vs quota.
 * Tables stay within 80 columns.
 */
import Table from 'cli-table3';
import { createLogUpdate } from 'log-update';
import { type TenantStats, outcome } from './stats.ts';

export interface ViewOptions {
  /** Plain lines instead of redrawing in place. */
  plain: boolean;
  /** ms between two reports in plain mode. @default 2000 */
  plainEveryMs?: number;
  out?: NodeJS.WriteStream;
}

export interface View {
  /** Shows the current counts (called often; plain mode prints only every `plainEveryMs`). */
  update(stats: readonly TenantStats[], elapsedMs: number, status: string): void;
  /** Leaves the last live frame on screen and restores the cursor. */
  done(): void;
}

const ms = (v: number) => Math.round(v).toString();
const num = (v: number) => (Number.isInteger(v) ? String(v) : v.toFixed(2));

function table(head: string[], plain: boolean): Table.Table {
  return new Table({
    head,
    style: plain ? { head: [], border: [], compact: true } : { head: ['cyan'], border: ['grey'], compact: true },
  });
}

export function createView(opts: ViewOptions): View {
  const out = opts.out ?? process.stdout;
  if (opts.plain) {
    const every = opts.plainEveryMs ?? 2000;
    let nextAt = 0;
    return {
      update(stats, elapsedMs, status) {
        if (elapsedMs < nextAt) return;
        nextAt = elapsedMs + every;
        const t = `[${(elapsedMs / 1000).toFixed(1).padStart(5)}s]`;
        out.write(`${t} ${status}\n`);
        for (const s of stats) {
          out.write(
            `${t} ${s.tenant.padEnd(9)} ${s.tier.padEnd(10)} queued ${String(s.queued).padStart(3)}  in flight ${String(s.inFlight).padStart(2)}  admitted ${String(s.admitted).padStart(4)}  waited max ${ms(s.maxWaitMs).padStart(5)} ms  model calls ${s.modelCalls}\n`,
          );
        }
      },
      done() {},
    };
  }
  const log = createLogUpdate(out);
  return {
    update(stats, elapsedMs, status) {
      const t = table(['Tenant', 'Tier', 'Queued', 'In\nflight', 'Admitted', 'Avg wait\nms', 'Max wait\nms'], false);
      let modelCalls = 0;
      for (const s of stats) {
        modelCalls += s.modelCalls;
        t.push([s.tenant, s.tier, s.queued, s.inFlight, s.admitted, ms(outcome(s).avgWaitMs), ms(s.maxWaitMs)]);
      }
      const head = `${(elapsedMs / 1000).toFixed(1).padStart(4)} s · ${status} · ${modelCalls} model calls`;
      log(`${head}\n${t.toString()}\nTool calls: queued = waiting for the tenant's token.`);
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
