/**
 * The rate limits of the loopback OpenAI server (fake-openai.ts): what an attempt is charged,
 * the `x-ratelimit-*` headers, and the 429 answers, in OpenAI's formats.
 *
 * Charging follows OpenAI's documented behaviour: a request costs 1 request, and LLM tokens
 * estimated at admission — the prompt (characters / 4) plus the most it may generate
 * (`max_completion_tokens`, `max_tokens` or `max_output_tokens`, times `n`; `defaultMaxTokens`
 * when none is set). The charge is not settled to the real usage afterwards.
 */
import { type Json, textLength } from './http.ts';
import {
  type BucketLimit,
  type BucketState,
  type Charge,
  ProviderGate,
  type Refusal,
  formatGoDuration,
  retryHeaders,
} from './provider-limits.ts';

/** The dimensions of an OpenAI model's limits. */
export type OpenAIDimension = 'requests' | 'llmTokens';

/**
 * One model's limits: `requests` and `llmTokens` per `windowMs`.
 * @example { requests: 10, llmTokens: 2_000, windowMs: 1000 }  // 10 RPS, 2k TPS; bursts of those
 */
export interface OpenAIModelLimit {
  /** Requests per window (RPM when the window is a minute). */
  readonly requests?: number;
  /** LLM tokens per window (TPM when the window is a minute). */
  readonly llmTokens?: number;
  /** @default 60_000 */
  readonly windowMs?: number;
}

/**
 * How the `x-ratelimit-*` headers are sent: `'real'` as OpenAI does (models with limits only),
 * `'minus-one'` as some Azure deployments do (every one is `-1`, on every response), `'none'`
 * never.
 */
export type RateLimitHeaderStyle = 'real' | 'minus-one' | 'none';

/** A decision: the headers to send, and the 429 to answer instead, if refused. */
export interface OpenAIVerdict {
  readonly headers: Record<string, string>;
  readonly refused?: { readonly headers: Record<string, string>; readonly body: object };
  /** LLM tokens charged (0 when refused or unlimited). */
  readonly llmTokens: number;
}

const HEADER_DIMS: readonly [OpenAIDimension, string][] = [
  ['requests', 'requests'],
  ['llmTokens', 'tokens'],
];

/** OpenAILimits decides each attempt against its model's buckets. */
export class OpenAILimits {
  readonly gate: ProviderGate<OpenAIDimension>;
  readonly #style: RateLimitHeaderStyle;
  readonly #retryHeaders: boolean;
  readonly #defaultMaxTokens: number;
  readonly #org: string;

  constructor(opts: {
    limits?: Readonly<Record<string, OpenAIModelLimit>>;
    rateLimitHeaders?: RateLimitHeaderStyle;
    retryHeaders?: boolean;
    defaultMaxTokens?: number;
    organization?: string;
    clock?: () => number;
  }) {
    const limits: Record<string, Partial<Record<OpenAIDimension, BucketLimit>>> = {};
    for (const [model, l] of Object.entries(opts.limits ?? {})) {
      const windowMs = l.windowMs ?? 60_000;
      limits[model] = {
        ...(l.requests !== undefined ? { requests: { limit: l.requests, windowMs } } : {}),
        ...(l.llmTokens !== undefined ? { llmTokens: { limit: l.llmTokens, windowMs } } : {}),
      };
    }
    this.gate = new ProviderGate(limits, opts.clock);
    this.#style = opts.rateLimitHeaders ?? 'real';
    this.#retryHeaders = opts.retryHeaders ?? true;
    this.#defaultMaxTokens = opts.defaultMaxTokens ?? 0;
    this.#org = opts.organization ?? 'org-fake';
  }

  /** decide charges one attempt at `path` with `body` (a POST naming a model), at `now`. */
  decide(path: string, model: string | undefined, body: Json, now: number): OpenAIVerdict {
    const buckets = this.gate.buckets(model);
    const forced = this.gate.takeForced(model);
    const headers = () => this.#headers(model, now);
    if (forced !== undefined) {
      const wait = forced.retryAfterMs;
      const retry = wait !== undefined ? retryHeaders(wait) : {};
      const again = wait !== undefined ? ` Please try again in ${formatGoDuration(wait)}.` : '';
      const message = `Rate limit reached for ${model} in organization ${this.#org} (forced by the test).${again}`;
      return {
        headers: {},
        refused: { headers: { ...headers(), ...retry }, body: errorBody(message, 'requests') },
        llmTokens: 0,
      };
    }
    if (buckets === undefined) return { headers: headers(), llmTokens: 0 };
    const llmTokens = chargeLLMTokens(path, body, this.#defaultMaxTokens);
    const charges: Charge<OpenAIDimension>[] = [
      { dimension: 'requests', cost: 1 },
      { dimension: 'llmTokens', cost: llmTokens },
    ];
    const refusal = buckets.admit(charges, now);
    if (refusal === undefined)
      return { headers: headers(), llmTokens: buckets.buckets.has('llmTokens') ? llmTokens : 0 };
    const finite = Number.isFinite(refusal.retryAfterMs);
    const retry = finite && this.#retryHeaders ? retryHeaders(refusal.retryAfterMs) : {};
    return {
      headers: {},
      refused: { headers: { ...headers(), ...retry }, body: errorBody(this.#message(model, refusal), unitOf(refusal)) },
      llmTokens: 0,
    };
  }

  /** state is a model's bucket for one dimension now (undefined: no such limit). */
  state(model: string, dimension: OpenAIDimension): BucketState | undefined {
    return this.gate.buckets(model)?.state(dimension, this.gate.now());
  }

  #headers(model: string | undefined, now: number): Record<string, string> {
    if (this.#style === 'none') return {};
    const out: Record<string, string> = {};
    if (this.#style === 'minus-one') {
      for (const [, unit] of HEADER_DIMS)
        for (const kind of ['limit', 'remaining', 'reset']) out[`x-ratelimit-${kind}-${unit}`] = '-1';
      return out;
    }
    const buckets = this.gate.buckets(model);
    for (const [dim, unit] of HEADER_DIMS) {
      const s = buckets?.state(dim, now);
      if (s === undefined) continue;
      out[`x-ratelimit-limit-${unit}`] = String(s.limit);
      out[`x-ratelimit-remaining-${unit}`] = String(s.remaining);
      out[`x-ratelimit-reset-${unit}`] = formatGoDuration(s.resetAfterMs);
    }
    return out;
  }

  #message(model: string | undefined, r: Refusal<OpenAIDimension>): string {
    const unit = unitOf(r);
    const b = this.gate.buckets(model)?.buckets.get(r.dimension);
    const windowMs = b?.windowMs ?? 60_000;
    const per = windowMs === 60_000 ? 'min' : formatGoDuration(windowMs);
    const abbr = `${unit === 'requests' ? 'R' : 'T'}P${windowMs === 60_000 ? 'M' : per}`;
    const where = `${model} in organization ${this.#org} on ${unit} per ${per} (${abbr})`;
    const more = 'Visit https://platform.openai.com/account/rate-limits to learn more.';
    if (!Number.isFinite(r.retryAfterMs))
      return `Request too large for ${where}: Limit ${r.limit}, Requested ${r.requested}. The input or output tokens must be reduced in order to run successfully. ${more}`;
    return `Rate limit reached for ${where}: Limit ${r.limit}, Used ${r.used}, Requested ${r.requested}. Please try again in ${formatGoDuration(r.retryAfterMs)}. ${more}`;
  }
}

const unitOf = (r: Refusal<OpenAIDimension>) => (r.dimension === 'requests' ? 'requests' : 'tokens');

function errorBody(message: string, type: string): object {
  return { error: { message, type, param: null, code: 'rate_limit_exceeded' } };
}

/**
 * chargeLLMTokens is what OpenAI charges an attempt's LLM-token limit at admission: the prompt's
 * characters / 4 (rounded up), plus the maximum output times `n` (none for embeddings).
 */
export function chargeLLMTokens(path: string, body: Json, defaultMaxTokens: number): number {
  if (body === null || typeof body !== 'object') return 0;
  const prompt = Math.ceil(
    (textLength(body.messages) + textLength(body.input) + textLength(body.instructions) + textLength(body.prompt)) / 4,
  );
  if (path.endsWith('/embeddings')) return prompt;
  const max = [body.max_completion_tokens, body.max_tokens, body.max_output_tokens].find(
    (v): v is number => typeof v === 'number' && v >= 0,
  );
  const n = typeof body.n === 'number' && body.n >= 1 ? body.n : 1;
  return prompt + (max ?? defaultMaxTokens) * n;
}
