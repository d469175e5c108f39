/**
 * From a response's rate-limit headers, as read by rate-limit-headers.ts, to what the pipeline
 * passes to the shared pools ({@link ProviderLimits}).
 */
import type { ProviderRateLimits } from '../rate-limit-headers.js';
import type { PoolReport, ProviderLimits } from './adapter.js';

/**
 * providerLimits turns one response's headers, read by `readOpenAIRateLimits` or
 * `readAnthropicRateLimits`, into the reports of the requests and LLM-token pools. The retry time
 * counts only on a 429 (it then pauses both pools): a 503's or 529's `retry-after` speaks of the
 * provider's load, not of the organisation's limits. Undefined when nothing valid was said.
 */
export function providerLimits(read: ProviderRateLimits, status: number): ProviderLimits | undefined {
  const retryAfterMs = status === 429 ? read.retryAfterMs : undefined;
  const requests = report(read.requests, retryAfterMs);
  const llmTokens = report(read.llmTokens, retryAfterMs);
  if (requests === undefined && llmTokens === undefined) return undefined;
  const out: ProviderLimits = {};
  if (requests !== undefined) out.requests = requests;
  if (llmTokens !== undefined) out.llmTokens = llmTokens;
  return out;
}

function report(window: ProviderRateLimits['requests'], retryAfterMs: number | undefined): PoolReport | undefined {
  if (window === undefined) return retryAfterMs !== undefined && retryAfterMs > 0 ? { retryAfterMs } : undefined;
  const out: PoolReport = {};
  if (window.limit !== undefined) out.limit = window.limit;
  if (window.remaining !== undefined) out.remaining = window.remaining;
  if (window.resetAfterMs !== undefined) out.resetAfterMs = window.resetAfterMs;
  if (retryAfterMs !== undefined && retryAfterMs > 0) out.retryAfterMs = retryAfterMs;
  return out;
}
