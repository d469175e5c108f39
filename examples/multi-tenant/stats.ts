/**
 * What the demo counts per tenant, and the numbers its final table derives from the counts.
 */
import type { Policy } from '@tollgate/core';
import { normalizePolicy } from '@tollgate/core/internal';
import { type Tier, quotaOf, tierOf, weightOf } from './tiers.ts';

/** TenantStats is one tenant's tool calls and model calls so far. Times are performance.now() ms. */
export interface TenantStats {
  readonly tenant: string;
  readonly tier: Tier;
  /** The tenant's weight in the org's shared pools. */
  readonly weight: number;
  /** The tenant's tool-call quota. */
  readonly quota: Policy;
  /** Tool calls handed to runToolCalls and not yet admitted by the limiter. */
  queued: number;
  /** Tool calls admitted and still running. */
  inFlight: number;
  /** Tool calls admitted so far. */
  admitted: number;
  /** Sum of the admitted tool calls' waits, ms. */
  waitedTotalMs: number;
  /** Longest wait of one tool call, ms. */
  maxWaitMs: number;
  /** Model calls answered. */
  modelCalls: number;
  /** Model calls made and not yet admitted (their first HTTP attempt still waits for tokens). */
  modelWaiting: number;
  /** HTTP attempts Tollgate admitted (retries included), and their waits, ms. */
  attemptsAdmitted: number;
  attemptWaitTotalMs: number;
  attemptMaxWaitMs: number;
  /** What the provider answered: attempts, 2xx and 429s; and those sent after the warm-up. */
  http: HttpCounts;
  httpAfterWarmup: HttpCounts;
  /** Model calls that failed, by what the caller saw (the HTTP status, or the error's name). */
  callerErrors: Record<string, number>;
  /** LLM tokens the model calls used (from `usage`). */
  llmTokens: number;
  /** Tool results the model saw as errors (bad arguments, a tool that threw). */
  toolErrors: number;
  /** When the first tool call was handed over, and when the last one was admitted. */
  firstSubmitAt: number | undefined;
  lastAdmitAt: number | undefined;
}

/** HttpCounts counts HTTP attempts by what the provider answered. */
export interface HttpCounts {
  attempts: number;
  ok: number;
  rateLimited: number;
}

export function newStats(tenant: string): TenantStats {
  return {
    tenant,
    tier: tierOf(tenant),
    weight: weightOf(tenant),
    quota: normalizePolicy(quotaOf(tenant).tools, `tools policy of ${tenant}`),
    queued: 0,
    inFlight: 0,
    admitted: 0,
    waitedTotalMs: 0,
    maxWaitMs: 0,
    modelCalls: 0,
    modelWaiting: 0,
    attemptsAdmitted: 0,
    attemptWaitTotalMs: 0,
    attemptMaxWaitMs: 0,
    http: { attempts: 0, ok: 0, rateLimited: 0 },
    httpAfterWarmup: { attempts: 0, ok: 0, rateLimited: 0 },
    callerErrors: {},
    llmTokens: 0,
    toolErrors: 0,
    firstSubmitAt: undefined,
    lastAdmitAt: undefined,
  };
}

/** Outcome is a tenant's result: what it achieved against what its quota allows. */
export interface Outcome {
  /** Seconds from the tenant's first tool call to its last admission. */
  windowS: number;
  /** Admitted tool calls per second over that window. */
  achievedPerS: number;
  /** Admitted calls beyond the bucket's capacity (the first burst), per second: the refill rate. */
  afterBurstPerS: number;
  /** The quota's long-run rate, tool calls per second. */
  quotaPerS: number;
  /** The most a token bucket can admit in the window: capacity + rate·T. */
  bound: number;
  avgWaitMs: number;
  /** admitted ≤ bound, give or take the 2 ms of refill that timer precision may admit early. */
  withinBound: boolean;
}

/** Node's timers fire with ms precision, so a wait may end up to ~1 ms early by performance.now. */
const TIMER_SLACK_MS = 2;

export function outcome(s: TenantStats): Outcome {
  const windowMs = s.firstSubmitAt === undefined || s.lastAdmitAt === undefined ? 0 : s.lastAdmitAt - s.firstSubmitAt;
  const windowS = windowMs / 1000;
  const bound = s.quota.capacity + s.quota.ratePerMs * windowMs;
  return {
    windowS,
    achievedPerS: windowS > 0 ? s.admitted / windowS : 0,
    afterBurstPerS: windowS > 0 ? Math.max(0, s.admitted - s.quota.capacity) / windowS : 0,
    quotaPerS: s.quota.ratePerMs * 1000,
    bound,
    avgWaitMs: s.admitted > 0 ? s.waitedTotalMs / s.admitted : 0,
    withinBound: s.admitted <= bound + s.quota.ratePerMs * TIMER_SLACK_MS + 1e-9,
  };
}
