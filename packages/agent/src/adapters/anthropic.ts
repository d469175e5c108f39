/**
 * The Anthropic adapter: `throttleAnthropic`, and what the attempt pipeline needs to know about
 * Anthropic's Messages API (which requests spend LLM tokens, their estimate, where `usage` is in
 * a message and in a stream, and the `anthropic-ratelimit-*` headers).
 */
import type { ProviderAdapter, ProviderLimits } from '../pipeline/adapter.js';
import { type ThrottleOptions, parseThrottleOptions } from '../pipeline/options.js';
import { Pipeline } from '../pipeline/pipeline.js';
import { readAnthropicRateLimits } from '../rate-limit-headers.js';
import { providerLimits } from '../pipeline/provider-limits.js';
import { MessageStreamUsage, estimateLLMTokens, spendsLLMTokens, usageOf } from './anthropic-llm-tokens.js';
import { checkClient, hookStainlessClient } from './stainless-hooks.js';

/** ThrottleAnthropicOptions configures {@link throttleAnthropic}; the same options as `throttleOpenAI` ({@link ThrottleOptions}). */
export type ThrottleAnthropicOptions = ThrottleOptions;

/** Any Anthropic client of @anthropic-ai/sdk 1.x (or a subclass). */
export interface AnthropicClientLike {
  withOptions(options: never): unknown;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

const nonEmpty = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** ANTHROPIC is the {@link ProviderAdapter} of Anthropic's Messages API (`/v1/messages`, beta included). */
export const ANTHROPIC: ProviderAdapter = {
  name: 'throttleAnthropic',
  spendsLLMTokens: (request) => spendsLLMTokens(request.method, request.path),
  estimateLLMTokens,
  userOf: (body) => (isRecord(body) && isRecord(body.metadata) ? nonEmpty(body.metadata.user_id) : undefined),
  modelOf: (body) => (isRecord(body) ? nonEmpty(body.model) : undefined),
  // Anthropic streams always report usage (message_start, message_delta): nothing to ask for.
  askStreamUsage: () => undefined,
  usageOf,
  streamUsage: () => new MessageStreamUsage(),
  readRateLimits,
};

/**
 * readRateLimits reads `anthropic-ratelimit-requests-*` into the requests pool and
 * `anthropic-ratelimit-tokens-*` (the most restrictive of the input and output token limits in
 * effect) into the LLM-token pool. A 429's `retry-after` pauses both: which limit it hit is only
 * in its body.
 */
function readRateLimits(status: number, headers: Headers): ProviderLimits | undefined {
  return providerLimits(readAnthropicRateLimits(headers), status);
}

/**
 * throttleAnthropic throttles `client` (an `Anthropic` of @anthropic-ai/sdk) and returns it: every
 * HTTP attempt first waits for the current user's tokens (one from `requests`, an estimate from
 * `llmTokens`), exactly as `throttleOpenAI` does for OpenAI's client, with the same options. The
 * SDK's own retries, `messages.create` (JSON and `stream: true`), `messages.stream(...)`,
 * `messages.parse`, `messages.countTokens` (a request token, no LLM tokens), the `beta.messages`
 * equivalents and tool runners, `.withResponse()`, `.asResponse()` and `withOptions` all keep
 * working and stay throttled. A client can be throttled once.
 *
 * The current user is, in order: the nearest `withUser`, the `user` option's answer, the body's
 * `metadata.user_id`, else `ANONYMOUS_USER`.
 *
 * LLM tokens: a request reserves the characters of its `system`, `messages` and `tools` / 4 plus
 * its `max_tokens` (capped at the bucket's capacity), and is settled to its `usage`: input +
 * cache creation + output tokens. Cache reads are not charged, as Anthropic's own input-token
 * limit does not charge them. A stream is settled at its `message_delta` event (the final output
 * count); a stream cut before it keeps its estimate.
 *
 * @example
 * const claude = throttleAnthropic(new Anthropic(), {
 *   requests: new RateLimiter({ backend, policy: { rate: 50, per: '1m' }, name: 'requests' }),
 *   llmTokens: new RateLimiter({ backend, policy: { rate: 40_000, per: '1m' }, name: 'llm-tokens' }),
 *   perUser: { concurrency: 4, maxQueued: 100 },
 * })
 * await withUser('user-42', () => claude.messages.create({ model, max_tokens: 1024, messages }))
 */
export function throttleAnthropic<C extends AnthropicClientLike>(client: C, options: ThrottleAnthropicOptions = {}): C {
  checkClient(client, 'throttleAnthropic', 'an Anthropic client from @anthropic-ai/sdk 1.x (new Anthropic({...}))');
  const pipeline = new Pipeline(ANTHROPIC, parseThrottleOptions('throttleAnthropic', options));
  return hookStainlessClient(client, pipeline) as unknown as C;
}
