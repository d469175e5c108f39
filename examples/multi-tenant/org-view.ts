/**
 * The demo's final word on the org's budget: a table of each tenant's requests, share, waits and
 * the provider's 429s, and the checks — the provider's bound b + r·T, the 429 rate after the
 * warm-up, and each tenant's share against its weight's while all were backlogged.
 */
import Table from 'cli-table3';
import type { AttemptRecord } from '../support/fake-openai.ts';
import { PROVIDER_LIMIT } from './org.ts';
import type { AttemptLog } from './provider.ts';
import type { TenantStats } from './stats.ts';
import { pct } from './view.ts';

/** Largest 429 rate after the warm-up that counts as "no storm". */
export const MAX_429_RATE = 0.01;
/** How far a tenant's share may be from its weight's, relative to it. */
export const SHARE_TOLERANCE = 0.1;

export interface OrgReport {
  readonly stats: readonly TenantStats[];
  readonly log: AttemptLog;
  /** The loopback provider's own record of the model's attempts (undefined on the real API). */
  readonly provider: readonly AttemptRecord[] | undefined;
  /** performance.now() of the warm-up's end and of the deadline. */
  readonly warmupEnd: number;
  readonly deadline: number;
  readonly start: number;
  readonly plain: boolean;
}

const ms = (v: number) => Math.round(v).toString();
const sec = (v: number) => (v / 1000).toFixed(1);

/** orgTable: per tenant, requests answered (OK), share while backlogged (fair share), waits, 429s and errors. */
export function orgTable(r: OrgReport): string {
  const ok = r.log.okPerTenant(r.warmupEnd, r.deadline);
  const total = [...ok.values()].reduce((a, b) => a + b, 0);
  const weights = r.stats.reduce((n, s) => n + s.weight, 0);
  const window = `${sec(r.warmupEnd - r.start)}–${sec(r.deadline - r.start)} s`;
  const t = new Table({
    head: ['Tenant', 'Tier', 'OK', `Share\n${window}`, 'Wait ms\navg/max', '429s\nall/>1s', 'Errors\nseen'],
    style: r.plain ? { head: [], border: [], compact: true } : { head: ['cyan'], border: ['grey'], compact: true },
  });
  for (const s of r.stats) {
    const share = total > 0 ? (ok.get(s.tenant) ?? 0) / total : 0;
    const avg = s.attemptsAdmitted > 0 ? s.attemptWaitTotalMs / s.attemptsAdmitted : 0;
    const errors = Object.values(s.callerErrors).reduce((a, b) => a + b, 0);
    t.push([
      s.tenant,
      `${s.tier} ×${s.weight}`,
      s.http.ok,
      `${pct(share)} (${Math.round((100 * s.weight) / weights)}%)`,
      `${ms(avg)}/${ms(s.attemptMaxWaitMs)}`,
      `${s.http.rateLimited}/${s.httpAfterWarmup.rateLimited}`,
      errors,
    ]);
  }
  return t.toString();
}

/** orgChecks: the lines that say whether the org stayed within the provider's limit, fairly. */
export function orgChecks(r: OrgReport): string[] {
  const lines: string[] = [];
  if (r.provider !== undefined && r.provider.length > 0) {
    const first = r.provider[0] as AttemptRecord;
    const ok = r.provider.filter((a) => a.status >= 200 && a.status < 300);
    const windowMs = ok.length > 0 ? (ok.at(-1) as AttemptRecord).time - first.time : 0;
    const rate = PROVIDER_LIMIT.requests / PROVIDER_LIMIT.windowMs;
    const bound = PROVIDER_LIMIT.requests + rate * windowMs;
    const within = ok.length <= bound + 1e-9;
    lines.push(
      `org: ${ok.length} requests answered ${within ? '≤' : '>'} ${PROVIDER_LIMIT.requests} + ${rate * 1000}/s × ${(windowMs / 1000).toFixed(2)} s = ${bound.toFixed(1)} ${within ? '✓' : '✗'}`,
    );
  }
  const after = r.stats.reduce((n, s) => n + s.httpAfterWarmup.attempts, 0);
  const limited = r.stats.reduce((n, s) => n + s.httpAfterWarmup.rateLimited, 0);
  const rate = after > 0 ? limited / after : 0;
  const calm = rate <= MAX_429_RATE;
  lines.push(
    `org: 429s after the first second: ${limited} of ${after} attempts (${pct(rate)}) ${calm ? '≤' : '>'} ${pct(MAX_429_RATE)} ${calm ? '✓' : '✗ a 429 storm'}`,
  );
  const errors: Record<string, number> = {};
  for (const s of r.stats) for (const [k, n] of Object.entries(s.callerErrors)) errors[k] = (errors[k] ?? 0) + n;
  const seen = Object.entries(errors).map(([k, n]) => `${n} × ${k}`);
  lines.push(`org: errors callers saw: ${seen.length > 0 ? seen.join(', ') : 'none'}`);

  const ok = r.log.okPerTenant(r.warmupEnd, r.deadline);
  const total = [...ok.values()].reduce((a, b) => a + b, 0);
  const weights = r.stats.reduce((n, s) => n + s.weight, 0);
  const backlogged = r.log.samples > 0 ? r.log.backloggedSamples / r.log.samples : 0;
  lines.push(
    `Shares of the ${total} requests answered ${sec(r.warmupEnd - r.start)}–${sec(r.deadline - r.start)} s (every tenant backlogged in ${pct(backlogged)} of samples), against the weights' within ±${SHARE_TOLERANCE * 100}%:`,
  );
  for (const s of r.stats) {
    const n = ok.get(s.tenant) ?? 0;
    const share = total > 0 ? n / total : 0;
    const fair = s.weight / weights;
    const fairly = Math.abs(share / fair - 1) <= SHARE_TOLERANCE;
    lines.push(
      `share ${s.tenant} (${s.tier} ×${s.weight}): ${n} = ${pct(share)}, fair ${pct(fair)} ${fairly ? '✓' : '✗'}`,
    );
  }
  return lines;
}
