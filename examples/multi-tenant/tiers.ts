/**
 * Tiers: what each plan may do, as token-bucket policies for @tollgate/core. One RateLimiter per
 * kind of budget takes a policy function key → policy, so every tenant gets its plan's quota and
 * its own bucket. The demo's quotas are per second so that a run takes seconds, not minutes.
 */
import type { PolicyInput } from '@tollgate/core';

export type Tier = 'free' | 'pro' | 'enterprise';

/** TierQuota is one plan's budgets. */
export interface TierQuota {
  /** Model requests (each HTTP attempt costs 1). */
  readonly requests: PolicyInput;
  /** LLM tokens (prompt + completion), reserved before a request and settled from its usage. */
  readonly llmTokens: PolicyInput;
  /** Tool calls, over all of the tenant's tools. */
  readonly tools: PolicyInput;
}

/** TIERS: one object per tier, returned as is by the policy functions (validated once each). */
export const TIERS: Readonly<Record<Tier, TierQuota>> = {
  free: {
    requests: { rate: 4, per: '1s' },
    llmTokens: { rate: 4_000, per: '1s', capacity: 8_000 },
    tools: { rate: 2, per: '1s', capacity: 4 },
  },
  pro: {
    requests: { rate: 10, per: '1s' },
    llmTokens: { rate: 20_000, per: '1s', capacity: 40_000 },
    tools: { rate: 6, per: '1s', capacity: 12 },
  },
  enterprise: {
    requests: { rate: 40, per: '1s' },
    llmTokens: { rate: 100_000, per: '1s', capacity: 200_000 },
    tools: { rate: 20, per: '1s', capacity: 40 },
  },
};

/** TENANTS: the demo's tenants and their plans (in a service, a lookup in your accounts table). */
export const TENANTS: Readonly<Record<string, Tier>> = {
  acme: 'enterprise',
  globex: 'pro',
  initech: 'pro',
  umbrella: 'free',
  hooli: 'free',
};

/** tierOf returns a tenant's plan; unknown tenants get the free tier. */
export function tierOf(tenant: string): Tier {
  return Object.hasOwn(TENANTS, tenant) ? (TENANTS[tenant] as Tier) : 'free';
}

/** quotaOf returns the budgets of the tenant a limiter key belongs to. */
export function quotaOf(tenant: string): TierQuota {
  return TIERS[tierOf(tenant)];
}

/**
 * WEIGHTS: each tier's weight in the org's shared pools. When tenants contend for the provider's
 * limit, each gets a share in proportion to its weight (enterprise 4× a free tenant).
 */
export const WEIGHTS: Readonly<Record<Tier, number>> = { free: 1, pro: 2, enterprise: 4 };

/** weightOf returns a tenant's weight in the shared pools. */
export function weightOf(tenant: string): number {
  return WEIGHTS[tierOf(tenant)];
}
