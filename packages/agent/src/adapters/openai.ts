/**
 * The OpenAI adapter: `throttleOpenAI`, and what the attempt pipeline needs to know about
 * OpenAI's API (which requests spend LLM tokens, their estimate, where `usage` is, and how a
 * stream is asked to report it).
 */
import type { ProviderAdapter, ProviderRequest, StreamUsageReader } from '../pipeline/adapter.js';
import { type ThrottleOptions, parseThrottleOptions } from '../pipeline/options.js';
import { Pipeline } from '../pipeline/pipeline.js';
import { providerLimits } from '../pipeline/provider-limits.js';
import { readOpenAIRateLimits } from '../rate-limit-headers.js';
import { estimateLLMTokens, spendsLLMTokens, usageOf } from './openai-llm-tokens.js';
import { checkClient, hookStainlessClient, pipelineOf } from './stainless-hooks.js';

/** ThrottleOpenAIOptions configures {@link throttleOpenAI}; see {@link ThrottleOptions}. */
export type ThrottleOpenAIOptions = ThrottleOptions;

/** Any OpenAI client (or subclass such as AzureOpenAI) of openai 5, 6 or 7. */
export interface OpenAIClientLike {
  withOptions(options: never): unknown;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

const nonEmpty = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** OPENAI is the {@link ProviderAdapter} of the OpenAI API (Chat Completions, Responses, Embeddings, Completions). */
export const OPENAI: ProviderAdapter = {
  name: 'throttleOpenAI',
  spendsLLMTokens: (request) => spendsLLMTokens(request.method, request.path),
  estimateLLMTokens,
  userOf: (body) => (isRecord(body) ? (nonEmpty(body.user) ?? nonEmpty(body.safety_identifier)) : undefined),
  modelOf: (body) => (isRecord(body) ? nonEmpty(body.model) : undefined),
  // Chat Completions streams report usage only when asked (`stream_options.include_usage`), in
  // one extra chunk with `choices: []`; Responses streams always report it.
  askStreamUsage(request: ProviderRequest): unknown {
    const body = request.body;
    if (!request.path.endsWith('/chat/completions') || !isRecord(body)) return undefined;
    const so = isRecord(body.stream_options) ? body.stream_options : {};
    if (so.include_usage === true) return undefined;
    return { ...body, stream_options: { ...so, include_usage: true } };
  },
  usageOf,
  streamUsage: (): StreamUsageReader => STREAM_USAGE,
  // `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, and a 429's `retry-after-ms` / `retry-after`.
  readRateLimits: (status, headers) => providerLimits(readOpenAIRateLimits(headers), status),
};

/** OpenAI's usage arrives whole, in one event: the first one seen is final. */
const STREAM_USAGE: StreamUsageReader = {
  read: usageOf,
  drop: (data) => isRecord(data) && Array.isArray(data.choices) && data.choices.length === 0,
  end: () => undefined,
};

/**
 * throttleOpenAI throttles `client` and returns it: every HTTP attempt first waits for the
 * current user's tokens (one from `requests`, an estimate from `llmTokens`). The SDK's own
 * retries, the requests of helpers (`chat.completions.runTools`, `.stream`, `.parse`,
 * `responses.stream`), `.withResponse()`, `.asResponse()`, streaming and `withOptions` all keep
 * working and stay throttled. Any client of the package works, `AzureOpenAI` and clients with a
 * `provider` or custom auth included: nothing the user built is copied or constructed again.
 * A client can be throttled once; for other limits, throttle another client.
 *
 * The current user is, in order: the nearest `withUser`, the `user` option's answer, the body's
 * `user` or `safety_identifier`, else `ANONYMOUS_USER`.
 *
 * The order of waits is: the user's queue slot, then the `requests` and `llmTokens` buckets
 * together, then (with `shared`) the user's fair share of the model's pools. With `shared`, every
 * response's `x-ratelimit-*` headers steer the pools, and a 429's retry time pauses the model's
 * pools in every process; the client's own retry of that attempt sleeps the same retry time,
 * then queues for its tokens again with everyone else. LLM tokens are settled before the caller sees the result, from the body the client
 * reads anyway; a stream is settled as its usage chunk passes. When a Chat Completions stream
 * did not ask for `stream_options.include_usage`, it is asked for, and the extra usage chunk
 * (`choices: []`) is removed before the client parses the stream, so the caller sees exactly the
 * chunks it asked for.
 *
 * @example
 * const client = throttleOpenAI(new OpenAI(), {
 *   requests: new RateLimiter({ backend, policy: { rate: 60, per: '1m' }, name: 'requests' }),
 *   llmTokens: new RateLimiter({ backend, policy: { rate: 40_000, per: '1m' }, name: 'llm-tokens' }),
 *   perUser: { concurrency: 4, maxQueued: 100 },
 *   shared: { requests: new SharedLimiter({ backend, name: 'openai-requests', policy: { rate: 10_000, per: '1m' } }) },
 *   shareKey: (user) => tenantOf(user),
 * })
 * await withUser('user-42', () => client.chat.completions.create({ model, messages }))
 */
export function throttleOpenAI<C extends OpenAIClientLike>(client: C, options: ThrottleOpenAIOptions = {}): C {
  checkClient(
    client,
    'throttleOpenAI',
    'an OpenAI client from the openai package, major 5, 6 or 7 (new OpenAI({...}))',
  );
  const pipeline = new Pipeline(OPENAI, parseThrottleOptions('throttleOpenAI', options));
  return hookStainlessClient(client, pipeline) as unknown as C;
}

/**
 * perUserStats returns, for a client made by {@link throttleOpenAI} or `throttleAnthropic` with
 * `perUser`, how many of `user`'s calls wait for a slot and how many hold one. Zeros for an idle
 * user or another client.
 */
export function perUserStats(client: object, user: string): { queued: number; inFlight: number } {
  return pipelineOf(client)?.queues?.stats(user) ?? { queued: 0, inFlight: 0 };
}
