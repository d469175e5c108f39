/**
 * ProviderAdapter: what the attempt pipeline needs to know about one provider's API. The pipeline
 * (admit → send → settle → learn from the response) is the same for every client; an adapter
 * only answers questions about requests and responses, and never touches a limiter.
 *
 * An adapter for a new client (the Anthropic SDK, an AI SDK middleware) supplies these answers
 * and a way to call the pipeline at the client's attempt boundaries: for a Stainless-generated
 * SDK (openai, @anthropic-ai/sdk), `hookStainlessClient` in adapters/stainless-hooks.ts does that
 * part; a middleware calls `Pipeline.openCall` / `admit` / `Attempt.send` / `settle` itself.
 */

/** A request as the client is about to send it. */
export interface ProviderRequest {
  /** The HTTP method, any case. */
  readonly method: string;
  /** The path below the client's base URL, e.g. `/chat/completions`. */
  readonly path: string;
  /** The body object the client will serialize (undefined for none). */
  readonly body: unknown;
  /** True when the client will read the response as server-sent events. */
  readonly stream: boolean;
}

/**
 * StreamUsageReader reads the LLM tokens of one streamed response, event by event. Only events
 * whose data holds a `"usage": {…}` object are parsed and shown to it (the rest pass untouched).
 */
export interface StreamUsageReader {
  /** read sees one event's parsed data; it answers the call's total LLM tokens once they are final. */
  read(data: unknown): number | undefined;
  /** drop reports whether the event exists only because {@link ProviderAdapter.askStreamUsage} asked for it. */
  drop(data: unknown): boolean;
  /** end answers the total known when the stream ended without a final report (undefined: keep the estimate). */
  end(): number | undefined;
}

/** What a provider says about its own limits on one response (for the shared pools). */
export interface ProviderLimits {
  /** The pool of requests: `limit`, `remaining` (requests), reset and retry times (ms from now). */
  requests?: PoolReport;
  /** The pool of LLM tokens, in LLM tokens. */
  llmTokens?: PoolReport;
}

/** One pool's numbers as a provider reports them; absent fields were missing or nonsense. */
export interface PoolReport {
  limit?: number;
  remaining?: number;
  resetAfterMs?: number;
  retryAfterMs?: number;
}

/** ProviderAdapter answers the pipeline's questions about one provider's requests and responses. */
export interface ProviderAdapter {
  /** The wrapping function's name, for messages (e.g. `throttleOpenAI`). */
  readonly name: string;
  /** spendsLLMTokens reports whether `request` spends LLM tokens (other requests take only a request token). */
  spendsLLMTokens(request: ProviderRequest): boolean;
  /** estimateLLMTokens is the default estimate of what `request` will spend (the `estimateLLMTokens` option replaces it). */
  estimateLLMTokens(path: string, body: unknown): number;
  /** userOf names the user a request body carries, if any (`withUser` and the `user` option come first). */
  userOf(body: unknown): string | undefined;
  /** modelOf names the model a request is for: the pool of the shared budgets. */
  modelOf(body: unknown): string | undefined;
  /**
   * askStreamUsage returns a copy of a stream request's body that asks the provider to report
   * usage, or undefined when it already does (or cannot). The events that exist only because of
   * it are removed before the client sees them ({@link StreamUsageReader.drop}).
   */
  askStreamUsage(request: ProviderRequest): unknown;
  /** usageOf reads the LLM tokens a JSON response body reports; undefined when it has no usage. */
  usageOf(body: unknown): number | undefined;
  /** streamUsage makes a reader for one streamed response; `asked` when askStreamUsage changed its request. */
  streamUsage(asked: boolean): StreamUsageReader;
  /**
   * readRateLimits reads the provider's rate-limit headers (and a 429's retry time) of a
   * response. Missing or nonsense values are left out, never an error. Optional: without it the
   * provider's word is not read. `providerLimits` (provider-limits.ts) turns what the readers of
   * rate-limit-headers.ts return into this shape (a retry time counts on a 429 only).
   */
  readRateLimits?(status: number, headers: Headers): ProviderLimits | undefined;
}
