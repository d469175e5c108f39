import type { RateLimiter } from '@tollgate/core';
import type { PerUserOptions } from '../per-user-queue.js';
import type { ProviderAdapter, StreamUsageReader } from '../pipeline/adapter.js';
import type { Attempt } from '../pipeline/attempt.js';
import { type SharedPools, parseThrottleOptions } from '../pipeline/options.js';
import { type Call, Pipeline } from '../pipeline/pipeline.js';
import { providerLimits } from '../pipeline/provider-limits.js';
import { readAnthropicRateLimits, readOpenAIRateLimits } from '../rate-limit-headers.js';
import {
  type ModelCallParams,
  type ModelLike,
  type ModelUsage,
  estimateCallLLMTokens,
  usageOfCall,
  userOfProviderOptions,
} from './ai-sdk-call.js';

export type { ModelCallParams, ModelLike, ModelUsage } from './ai-sdk-call.js';

/**
 * TollgateMiddlewareOptions configures {@link tollgateMiddleware}: the options of
 * `throttleOpenAI`, applied to each model call (`doGenerate` / `doStream`) instead of each HTTP
 * attempt. Every field is optional.
 */
export interface TollgateMiddlewareOptions {
  /**
   * Requests per user: every model call (each step of a tool loop, each retry the AI SDK makes)
   * takes one token. A call that failed after admission keeps it (the provider may have counted
   * it); a call stopped before it went out gives it back.
   */
  requests?: RateLimiter;
  /**
   * LLM tokens per user: an estimate is reserved before each call
   * ({@link estimateCallLLMTokens}, capped at the bucket's capacity) and settled to the call's
   * reported usage (`inputTokens.total + outputTokens.total`): the difference goes back, or the
   * excess is charged to the user's next calls. A stream settles when its `finish` part passes;
   * a stream that ends, errors or is cancelled before it keeps the estimate. A call that fails
   * (the provider answered an error, or no response) gives its estimate back.
   */
  llmTokens?: RateLimiter;
  /**
   * Finds the user of a call from its parameters when no `withUser` is around it. After it, the
   * first `safetyIdentifier` or `user` string in the call's `providerOptions` is tried; with none
   * the call counts against `ANONYMOUS_USER`.
   * @example (params) => params.providerOptions?.tollgate?.user as string | undefined
   */
  user?: (params: ModelCallParams) => string | undefined;
  /**
   * Per user, bounds the model calls in flight (from admission until a generate call answers,
   * or a stream ends or is cancelled) and those waiting for a slot. A call beyond `maxQueued`
   * rejects at once with `QueueFullError` (which the AI SDK does not retry).
   */
  perUser?: PerUserOptions;
  /**
   * The provider's limits, shared fairly by all users (`SharedLimiter`s from @tollgate/core);
   * the pool is the model id (`model.modelId`). A call waits for the user's own buckets first,
   * then for its share of the pool (its LLM-token estimate capped at the pool's capacity,
   * settled to the reported usage). The provider's rate-limit headers, on answers and on
   * errors alike, steer the pools: Anthropic's for an `anthropic*` provider, OpenAI's
   * `x-ratelimit-*` (which OpenAI-compatible providers share) for any other; a 429's retry time
   * pauses the model's pools in every process.
   */
  shared?: SharedPools;
  /** Whose share of the `shared` pools a user draws on, e.g. the user's tenant. @default the user */
  shareKey?: (user: string) => string;
  /**
   * The longest one call may wait for its tokens, in ms; longer fails at once with
   * `MaxWaitExceededError` (not retried by the AI SDK). @default Infinity
   */
  maxWaitMs?: number;
  /** Replaces {@link estimateCallLLMTokens} (the default) for the LLM-token estimate of a call. */
  estimateLLMTokens?: (params: ModelCallParams) => number;
  /** Called each time a model call is admitted, after its wait. */
  onAdmit?: (event: ModelCallAdmitEvent) => void;
  /** Called with errors of background work (refunds, charges, observations). Must not throw. */
  onError?: (error: unknown) => void;
}

/** ModelCallAdmitEvent describes one admitted model call. */
export interface ModelCallAdmitEvent {
  /** The user the call counted against. */
  user: string;
  /** The provider and model, e.g. `openai.chat` and `gpt-4o-mini`. */
  provider: string;
  model: string;
  /** `generate` (generateText, generateObject) or `stream` (streamText, streamObject). */
  operation: 'generate' | 'stream';
  /** Ms the call waited for its slot and tokens. */
  waitedMs: number;
  /** LLM tokens reserved from the user's bucket (0 without `llmTokens`). */
  llmTokens: number;
}

/** The generate result of a V4 model, as far as the middleware reads it. */
interface GenerateResultLike {
  usage: ModelUsage;
  response?: { headers?: Record<string, string | undefined> | undefined } | undefined;
}

/** The stream result of a V4 model, as far as the middleware reads it. */
interface StreamResultLike {
  stream: ReadableStream<unknown>;
  response?: { headers?: Record<string, string | undefined> | undefined } | undefined;
}

/**
 * TollgateMiddleware is a `LanguageModelV4Middleware` (AI SDK 7): pass it to `wrapLanguageModel`.
 * Its members are written as generic methods so that it type-checks against the AI SDK's own
 * types without @tollgate/agent depending on them.
 */
export interface TollgateMiddleware {
  readonly specificationVersion: 'v4';
  wrapGenerate<R extends GenerateResultLike>(options: WrapOptions<'doGenerate', R>): Promise<R>;
  wrapStream<R extends StreamResultLike>(options: WrapOptions<'doStream', R>): Promise<R>;
}

/** What `wrapGenerate` (`doGenerate`) and `wrapStream` (`doStream`) receive, as far as read. */
export type WrapOptions<Do extends 'doGenerate' | 'doStream', R> = { [K in Do]: () => PromiseLike<R> } & {
  params: ModelCallParams;
  model: ModelLike;
};

/** The request a middleware call hands the pipeline: the call's parameters and its model. */
interface ModelCall {
  readonly params: ModelCallParams;
  readonly model: ModelLike;
}

const NO_STREAM_USAGE: StreamUsageReader = { read: () => undefined, drop: () => false, end: () => undefined };

/**
 * AI_SDK is the {@link ProviderAdapter} of a model call: the AI SDK asks for stream usage and
 * reads it itself, so usage comes from its results, not from bodies or events; and the
 * middleware reads the rate-limit headers by the model's provider (see {@link learn}).
 */
const AI_SDK: ProviderAdapter = {
  name: 'tollgateMiddleware',
  spendsLLMTokens: () => true,
  estimateLLMTokens: (_path, body) => estimateCallLLMTokens((body as ModelCall).params),
  userOf: (body) => userOfProviderOptions((body as ModelCall).params),
  modelOf: (body) => (body as ModelCall).model.modelId,
  askStreamUsage: () => undefined,
  usageOf: () => undefined,
  streamUsage: () => NO_STREAM_USAGE,
};

/**
 * tollgateMiddleware returns an AI SDK language-model middleware whose every model call first
 * waits for the current user's tokens: `generateText`, `streamText`, `generateObject`, each step
 * of a tool loop and each retry the AI SDK makes. LLM tokens are reserved from an estimate and
 * settled to the usage the model reports, streams included (at their `finish` part).
 *
 * The current user is, in order: the nearest `withUser`, the `user` option's answer, a
 * `safetyIdentifier` / `user` in the call's `providerOptions`, else `ANONYMOUS_USER`.
 *
 * @example
 * const model = wrapLanguageModel({
 *   model: openai('gpt-4o-mini'),
 *   middleware: tollgateMiddleware({ requests, llmTokens, perUser: { concurrency: 2 } }),
 * })
 * await withUser('user-42', () => generateText({ model, prompt: 'Hello' }))
 */
export function tollgateMiddleware(options: TollgateMiddlewareOptions = {}): TollgateMiddleware {
  const config = parseThrottleOptions('tollgateMiddleware', options);
  const { user, estimateLLMTokens, onAdmit } = options;
  const p = new Pipeline(AI_SDK, {
    ...config,
    // The options see a call's parameters; the pipeline hands them the request it was given.
    user: user !== undefined ? (body) => user((body as ModelCall).params) : undefined,
    estimateLLMTokens:
      estimateLLMTokens !== undefined ? (_path, body) => estimateLLMTokens((body as ModelCall).params) : undefined,
    // Reported here, with the provider and model the pipeline does not know.
    onAdmit: undefined,
  });

  const enter = async (
    params: ModelCallParams,
    model: ModelLike,
    operation: 'generate' | 'stream',
  ): Promise<Attempt> => {
    const signal = params.abortSignal;
    const start = performance.now();
    // One call per model call: the AI SDK's retries call the middleware again.
    const call = p.openCall(
      {},
      { method: 'POST', path: operation, body: { params, model } satisfies ModelCall, stream: false },
    );
    const admitting = p.admit(call, signal, false);
    if (admitting !== undefined) await admitting;
    const attempt = call.current as Attempt;
    // Aborted while waiting: everything went back; the caller sees the AI SDK's own abort error.
    if (!attempt.send()) throw signal?.reason ?? new DOMException('This operation was aborted', 'AbortError');
    if (onAdmit !== undefined) {
      const event = {
        user: call.user,
        provider: model.provider,
        model: model.modelId,
        operation,
        waitedMs: performance.now() - start,
        llmTokens: attempt.llmReserved,
      };
      try {
        onAdmit(event);
      } catch (e) {
        p.background(Promise.reject(e));
      }
    }
    return attempt;
  };

  const failed = (attempt: Attempt, model: ModelLike, error: unknown): never => {
    attempt.fail();
    const e =
      error !== null && typeof error === 'object' ? (error as { statusCode?: unknown; responseHeaders?: unknown }) : {};
    learn(p, attempt.call, model, typeof e.statusCode === 'number' ? e.statusCode : 0, e.responseHeaders);
    throw error;
  };

  return {
    specificationVersion: 'v4',
    async wrapGenerate<R extends GenerateResultLike>({
      doGenerate,
      params,
      model,
    }: WrapOptions<'doGenerate', R>): Promise<R> {
      const attempt = await enter(params, model, 'generate');
      let result: R;
      try {
        result = await doGenerate();
      } catch (e) {
        return failed(attempt, model, e);
      }
      attempt.settle(usageOfCall(result.usage));
      learn(p, attempt.call, model, 200, result.response?.headers);
      return result;
    },
    async wrapStream<R extends StreamResultLike>({ doStream, params, model }: WrapOptions<'doStream', R>): Promise<R> {
      const attempt = await enter(params, model, 'stream');
      let result: R;
      try {
        result = await doStream();
      } catch (e) {
        return failed(attempt, model, e);
      }
      learn(p, attempt.call, model, 200, result.response?.headers);
      return { ...result, stream: watchStream(result.stream, attempt) };
    },
  };
}

/**
 * learn passes the provider's rate-limit headers of a call's answer (or of its error, the AI
 * SDK's `APICallError.responseHeaders`) to the call's shared pools: Anthropic's headers for an
 * `anthropic*` provider, else OpenAI's `x-ratelimit-*`.
 */
function learn(p: Pipeline, call: Call, model: ModelLike, status: number, headers: unknown): void {
  if (call.pool === undefined || headers === null || typeof headers !== 'object') return;
  const h = headers as Readonly<Record<string, string | undefined>>;
  const read = String(model.provider).startsWith('anthropic') ? readAnthropicRateLimits(h) : readOpenAIRateLimits(h);
  p.steer(call, providerLimits(read, status));
}

/**
 * watchStream passes the model's stream parts on unchanged, settles `attempt` to the usage of
 * the `finish` part, and frees its slot when the stream ends, errors or is cancelled (settling
 * with unknown usage, so the estimate stays, when no `finish` part came).
 */
function watchStream(source: ReadableStream<unknown>, attempt: Attempt): ReadableStream<unknown> {
  const reader = source.getReader();
  return new ReadableStream<unknown>({
    async pull(controller) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      try {
        chunk = await reader.read();
      } catch (e) {
        attempt.settle(undefined);
        controller.error(e);
        return;
      }
      if (chunk.done) {
        attempt.settle(undefined);
        controller.close();
        return;
      }
      const part = chunk.value as { type?: unknown; usage?: ModelUsage } | null;
      if (part !== null && typeof part === 'object' && part.type === 'finish') attempt.settle(usageOfCall(part.usage));
      controller.enqueue(chunk.value);
    },
    cancel(reason) {
      attempt.settle(undefined);
      return reader.cancel(reason);
    },
  });
}
