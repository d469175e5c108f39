/**
 * The organisation's limit at the provider, and the shared pool the demo divides it with.
 *
 * The loopback provider allows the org {@link PROVIDER_LIMIT} requests a second for the demo's
 * model, whoever the tenant; the tenants together want more. The pool is configured at
 * {@link GUESSED_POLICY}, twice the real limit, as a user who guessed wrong would: the provider's
 * `x-ratelimit-*` headers on the first responses lower it to the real limit.
 */
import { type Backend, SharedLimiter } from '@tollgate/core';
import { weightOf } from './tiers.ts';

/** The provider's limit for the model: requests per window, bursts of as many. */
export const PROVIDER_LIMIT = { requests: 20, windowMs: 1000 } as const;

/** The shared pool's policy as the user set it: 2× the provider's limit (the headers correct it). */
export const GUESSED_POLICY = { rate: 2 * PROVIDER_LIMIT.requests, per: '1s' } as const;

/** Attempts sent in the first ms are the warm-up: the pool learns the real limit from their answers. */
export const WARMUP_MS = 1000;

/** orgRequests is the org's requests pool per model, divided among tenants by their tier's weight. */
export function orgRequests(backend: Backend): SharedLimiter {
  return new SharedLimiter({ backend, name: 'org-requests', policy: GUESSED_POLICY, weight: weightOf });
}
