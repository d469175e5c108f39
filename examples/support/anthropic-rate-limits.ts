/**
 * The rate limits of the loopback Anthropic server (fake-anthropic.ts), in Anthropic's formats:
 * the `anthropic-ratelimit-*` headers (resets as RFC 3339 instants), `retry-after` in seconds,
 * and the `rate_limit_error` body.
 *
 * Charging follows Anthropic's documented behaviour: a request costs 1 request and its input LLM
 * tokens (characters of `system` and `messages` / 4; cache reads are not charged) at admission;
 * output LLM tokens are charged `max_tokens` at admission, and what the answer did not use is
 * given back when it ends.
 */
import type { Json } from './http.ts';
import { textLength } from './http.ts';
import { type BucketLimit, type BucketState, type Charge, ProviderGate, type Refusal } from './provider-limits.ts';

/** The dimensions of an Anthropic model's limits. */
export type AnthropicDimension = 'requests' | 'inputLLMTokens' | 'outputLLMTokens';

/**
 * One model's limits per `windowMs`.
 * @example { requests: 10, inputLLMTokens: 4_000, outputLLMTokens: 1_000, windowMs: 1000 }
 */
export interface AnthropicModelLimit {
  /** Requests per window (RPM when the window is a minute). */
  readonly requests?: number;
  /** Input LLM tokens per window (ITPM). */
  readonly inputLLMTokens?: number;
  /** Output LLM tokens per window (OTPM). */
  readonly outputLLMTokens?: number;
  /** @default 60_000 */
  readonly windowMs?: number;
}

/** A decision: the headers to send, or the 429 to answer instead. */
export interface AnthropicVerdict {
  readonly headers: Record<string, string>;
  readonly refused?: { readonly headers: Record<string, string>; readonly body: object };
  /** The output LLM tokens charged (max_tokens), to settle with `settle` when the answer ends. */
  readonly outputCharged: number;
  /** Input plus output LLM tokens charged at admission. */
  readonly llmTokens: number;
}

const HEADER_DIMS: readonly [AnthropicDimension, string][] = [
  ['requests', 'requests'],
  ['inputLLMTokens', 'input-tokens'],
  ['outputLLMTokens', 'output-tokens'],
];

/** AnthropicLimits decides each attempt against its model's buckets. */
export class AnthropicLimits {
  readonly gate: ProviderGate<AnthropicDimension>;
  readonly #headersOn: boolean;
  readonly #retryAfter: boolean;

  constructor(opts: {
    limits?: Readonly<Record<string, AnthropicModelLimit>>;
    rateLimitHeaders?: 'real' | 'none';
    retryHeaders?: boolean;
    clock?: () => number;
  }) {
    const limits: Record<string, Partial<Record<AnthropicDimension, BucketLimit>>> = {};
    for (const [model, l] of Object.entries(opts.limits ?? {})) {
      const windowMs = l.windowMs ?? 60_000;
      const dims: Partial<Record<AnthropicDimension, BucketLimit>> = {};
      for (const [dim] of HEADER_DIMS) {
        const limit = l[dim];
        if (limit !== undefined) dims[dim] = { limit, windowMs };
      }
      limits[model] = dims;
    }
    this.gate = new ProviderGate(limits, opts.clock);
    this.#headersOn = (opts.rateLimitHeaders ?? 'real') === 'real';
    this.#retryAfter = opts.retryHeaders ?? true;
  }

  /** decide charges one `POST /v1/messages` for `model`, at `now`. */
  decide(model: string, body: Json, now: number): AnthropicVerdict {
    const forced = this.gate.takeForced(model);
    if (forced !== undefined) {
      const wait = forced.retryAfterMs;
      const retry =
        wait !== undefined
          ? { 'retry-after': String(Math.ceil(wait / 1000)), 'retry-after-ms': String(Math.ceil(wait)) }
          : {};
      return {
        headers: {},
        refused: {
          headers: { ...this.#headers(model, now), ...retry, 'x-should-retry': 'true' },
          body: errorBody(`This request would exceed the rate limit for ${model} (forced by the test).`),
        },
        outputCharged: 0,
        llmTokens: 0,
      };
    }
    const buckets = this.gate.buckets(model);
    if (buckets === undefined) return { headers: {}, outputCharged: 0, llmTokens: 0 };
    const input = inputLLMTokens(body);
    const output = typeof body?.max_tokens === 'number' && body.max_tokens > 0 ? body.max_tokens : 0;
    const charges: Charge<AnthropicDimension>[] = [
      { dimension: 'requests', cost: 1 },
      { dimension: 'inputLLMTokens', cost: input },
      { dimension: 'outputLLMTokens', cost: output },
    ];
    const refusal = buckets.admit(charges, now);
    if (refusal === undefined) {
      const charged = (d: AnthropicDimension, n: number) => (buckets.buckets.has(d) ? n : 0);
      return {
        headers: this.#headers(model, now),
        outputCharged: charged('outputLLMTokens', output),
        llmTokens: charged('inputLLMTokens', input) + charged('outputLLMTokens', output),
      };
    }
    const fits = Number.isFinite(refusal.retryAfterMs);
    const retry = fits && this.#retryAfter ? { 'retry-after': String(Math.ceil(refusal.retryAfterMs / 1000)) } : {};
    return {
      headers: {},
      refused: {
        headers: { ...this.#headers(model, now), ...retry, 'x-should-retry': fits ? 'true' : 'false' },
        body: errorBody(message(refusal, buckets.buckets.get(refusal.dimension)?.windowMs ?? 60_000)),
      },
      outputCharged: 0,
      llmTokens: 0,
    };
  }

  /** settle gives back the output LLM tokens charged but not used. */
  settle(model: string, outputCharged: number, outputUsed: number): void {
    this.gate.buckets(model)?.give('outputLLMTokens', outputCharged - outputUsed, this.gate.now());
  }

  /** state is a model's bucket for one dimension now (undefined: no such limit). */
  state(model: string, dimension: AnthropicDimension): BucketState | undefined {
    return this.gate.buckets(model)?.state(dimension, this.gate.now());
  }

  #headers(model: string, now: number): Record<string, string> {
    if (!this.#headersOn) return {};
    const buckets = this.gate.buckets(model);
    if (buckets === undefined) return {};
    const out: Record<string, string> = {};
    const at = (ms: number) => new Date(now + Math.ceil(ms)).toISOString();
    let tokens: BucketState | undefined;
    for (const [dim, name] of HEADER_DIMS) {
      const s = buckets.state(dim, now);
      if (s === undefined) continue;
      out[`anthropic-ratelimit-${name}-limit`] = String(s.limit);
      out[`anthropic-ratelimit-${name}-remaining`] = String(s.remaining);
      out[`anthropic-ratelimit-${name}-reset`] = at(s.resetAfterMs);
      // tokens-*: the most restrictive token limit in effect (the smaller share left).
      if (dim !== 'requests' && (tokens === undefined || s.remaining / s.limit < tokens.remaining / tokens.limit))
        tokens = s;
    }
    if (tokens !== undefined) {
      out['anthropic-ratelimit-tokens-limit'] = String(tokens.limit);
      out['anthropic-ratelimit-tokens-remaining'] = String(tokens.remaining);
      out['anthropic-ratelimit-tokens-reset'] = at(tokens.resetAfterMs);
    }
    return out;
  }
}

/** inputLLMTokens is what a request's `system`, `messages` and `tools` count: characters / 4. */
export function inputLLMTokens(body: Json): number {
  if (body === null || typeof body !== 'object') return 0;
  const tools = Array.isArray(body.tools) ? JSON.stringify(body.tools).length : 0;
  return Math.ceil((textLength(body.system) + textLength(body.messages) + tools) / 4);
}

function message(r: Refusal<AnthropicDimension>, windowMs: number): string {
  const unit = { requests: 'requests', inputLLMTokens: 'input tokens', outputLLMTokens: 'output tokens' }[r.dimension];
  const per = windowMs === 60_000 ? 'minute' : `${windowMs} ms`;
  const more =
    'For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage.';
  if (!Number.isFinite(r.retryAfterMs))
    return `This request asks for ${r.requested} ${unit}, more than your organization's rate limit of ${r.limit} ${unit} per ${per}. ${more}`;
  return `This request would exceed your organization's rate limit of ${r.limit} ${unit} per ${per}. ${more} Please reduce the prompt length or the maximum tokens requested, or try again later.`;
}

export function errorBody(message: string, type = 'rate_limit_error'): object {
  return { type: 'error', error: { type, message } };
}
