/**
 * Reading the providers' rate-limit headers into one provider-neutral shape, for
 * `SharedLimiter.observe`. Pure functions: no I/O, `now` injectable. A missing, partial or
 * nonsense value (Azure's `-1`, a negative, NaN, empty or garbage) is left out, never an error.
 */

/**
 * RateLimitWindow is what a provider said about one of its limits, on one response. Every field
 * is optional: providers send some, none, or nonsense.
 */
export interface RateLimitWindow {
  /** The limit: requests or LLM tokens per the provider's window (positive). */
  limit?: number;
  /** What is left of it now (≥ 0). */
  remaining?: number;
  /** Ms until it is fully replenished (≥ 0). */
  resetAfterMs?: number;
}

/**
 * ProviderRateLimits is one response's rate-limit headers, per dimension. A dimension is absent
 * when the response said nothing valid about it.
 */
export interface ProviderRateLimits {
  /** Requests (OpenAI `x-ratelimit-*-requests`, Anthropic `anthropic-ratelimit-requests-*`). */
  requests?: RateLimitWindow;
  /**
   * LLM tokens, input and output together (OpenAI `x-ratelimit-*-tokens`; Anthropic
   * `anthropic-ratelimit-tokens-*`, its most restrictive token limit in effect).
   */
  llmTokens?: RateLimitWindow;
  /** Input LLM tokens (Anthropic `anthropic-ratelimit-input-tokens-*`). */
  inputLLMTokens?: RateLimitWindow;
  /** Output LLM tokens (Anthropic `anthropic-ratelimit-output-tokens-*`). */
  outputLLMTokens?: RateLimitWindow;
  /** Ms to wait before the next attempt (`retry-after-ms`, else `retry-after`; ≥ 0). */
  retryAfterMs?: number;
}

/** HeadersLike is a fetch `Headers`, or a plain record (any case of names; arrays: first value). */
export type HeadersLike =
  | { get(name: string): string | null }
  | Readonly<Record<string, string | readonly string[] | number | null | undefined>>;

const GO_DURATION = /^(?:(?:\d+(?:\.\d*)?|\.\d+)(?:h|ms|m|s|us|µs|μs|ns))+$/;
const GO_PART = /(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|μs|ns)/g;
const UNIT_MS: Readonly<Record<string, number>> = {
  h: 3_600_000,
  m: 60_000,
  s: 1000,
  ms: 1,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ns: 1e-6,
};
const DECIMAL = /^(?:\d+(?:\.\d*)?|\.\d+)$/;
// RFC 3339 requires a full date and time; a bare number (which Date.parse would accept) is not one.
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:\d{2})$/;
// An HTTP date (IMF-fixdate, or the obsolete RFC 850 / asctime forms): it names a weekday.
const HTTP_DATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,? /;

/** headerOf reads one header: trimmed, first of repeats, undefined when absent or empty. */
export function headerOf(headers: HeadersLike, name: string): string | undefined {
  let v: unknown;
  if (typeof (headers as { get?: unknown }).get === 'function') {
    v = (headers as { get(name: string): string | null }).get(name);
  } else {
    const rec = headers as Readonly<Record<string, unknown>>;
    v = rec[name];
    if (v === undefined) {
      const lower = name.toLowerCase();
      for (const k of Object.keys(rec))
        if (k.toLowerCase() === lower) {
          v = rec[k];
          break;
        }
    }
  }
  if (Array.isArray(v)) v = v[0];
  if (typeof v === 'number') v = String(v);
  if (typeof v !== 'string') return undefined;
  // fetch joins repeated headers with ", ": the first is what the provider meant.
  const first = (v.includes(',') && !HTTP_DATE.test(v.trim()) ? v.split(',')[0] : v)?.trim();
  return first === '' ? undefined : first;
}

/** parseCount reads a non-negative decimal count (`"10"`, `"0"`); undefined for anything else. */
export function parseCount(text: string | undefined): number | undefined {
  if (text === undefined || !DECIMAL.test(text)) return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : undefined;
}

/**
 * parseResetDuration reads OpenAI's reset durations (Go `time.Duration` strings: `6m0s`, `12ms`,
 * `1.5s`, `1h2m3s`, `0s`) into ms; a bare number is taken as seconds. Undefined for anything else
 * (`-1`, `-5s`, `soon`, `1x`).
 */
export function parseResetDuration(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (DECIMAL.test(text)) return Number(text) * 1000;
  if (!GO_DURATION.test(text)) return undefined;
  let ms = 0;
  for (const [, value, unit] of text.matchAll(GO_PART)) ms += Number(value) * (UNIT_MS[unit as string] as number);
  return Number.isFinite(ms) ? ms : undefined;
}

/**
 * parseResetTimestamp reads an RFC 3339 instant (Anthropic's resets, e.g.
 * `2026-01-02T03:04:05Z`) into ms after `now` (0 when it is past). Undefined when not RFC 3339.
 */
export function parseResetTimestamp(text: string | undefined, now: number): number | undefined {
  if (text === undefined || !RFC3339.test(text)) return undefined;
  const at = Date.parse(text);
  return Number.isFinite(at) ? Math.max(0, at - now) : undefined;
}

/**
 * readRetryAfterMs reads `retry-after-ms` (ms), else `retry-after` (seconds, or an HTTP date
 * relative to `now`, 0 when past). Undefined when neither holds a valid value.
 */
export function readRetryAfterMs(headers: HeadersLike, now: number = Date.now()): number | undefined {
  const ms = parseCount(headerOf(headers, 'retry-after-ms'));
  if (ms !== undefined) return ms;
  const text = headerOf(headers, 'retry-after');
  const seconds = parseCount(text);
  if (seconds !== undefined) return seconds * 1000;
  if (text === undefined || !HTTP_DATE.test(text)) return undefined;
  const at = Date.parse(text);
  return Number.isFinite(at) ? Math.max(0, at - now) : undefined;
}

/**
 * readOpenAIRateLimits reads OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
 * (and the `*_usage_based` token variants, which, when both are valid, replace the plain ones if
 * they leave less), plus the retry headers. Headers of other OpenAI-compatible providers that use
 * the same names read the same way.
 *
 * @example
 * readOpenAIRateLimits(response.headers)
 * // { requests: { limit: 10, remaining: 9, resetAfterMs: 6000 }, llmTokens: {...}, retryAfterMs?: ... }
 */
export function readOpenAIRateLimits(headers: HeadersLike, now: number = Date.now()): ProviderRateLimits {
  const window = (suffix: string) =>
    compact<RateLimitWindow>({
      limit: positive(parseCount(headerOf(headers, `x-ratelimit-limit-${suffix}`))),
      remaining: parseCount(headerOf(headers, `x-ratelimit-remaining-${suffix}`)),
      resetAfterMs: parseResetDuration(headerOf(headers, `x-ratelimit-reset-${suffix}`)),
    });
  return (
    compact<ProviderRateLimits>({
      requests: window('requests'),
      llmTokens: tighter(window('tokens'), window('tokens_usage_based')),
      retryAfterMs: readRetryAfterMs(headers, now),
    }) ?? {}
  );
}

/**
 * readAnthropicRateLimits reads Anthropic's
 * `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
 * (resets are RFC 3339 instants, taken relative to `now`), plus `retry-after`.
 *
 * @example
 * readAnthropicRateLimits(response.headers)
 * // { requests: {...}, llmTokens: {...}, inputLLMTokens: {...}, outputLLMTokens: {...} }
 */
export function readAnthropicRateLimits(headers: HeadersLike, now: number = Date.now()): ProviderRateLimits {
  const window = (dim: string) =>
    compact<RateLimitWindow>({
      limit: positive(parseCount(headerOf(headers, `anthropic-ratelimit-${dim}-limit`))),
      remaining: parseCount(headerOf(headers, `anthropic-ratelimit-${dim}-remaining`)),
      resetAfterMs: parseResetTimestamp(headerOf(headers, `anthropic-ratelimit-${dim}-reset`), now),
    });
  return (
    compact<ProviderRateLimits>({
      requests: window('requests'),
      llmTokens: window('tokens'),
      inputLLMTokens: window('input-tokens'),
      outputLLMTokens: window('output-tokens'),
      retryAfterMs: readRetryAfterMs(headers, now),
    }) ?? {}
  );
}

// A limit of 0 would stop the pool forever on one odd header; no provider means that.
const positive = (n: number | undefined) => (n !== undefined && n > 0 ? n : undefined);

/** tighter picks the window that leaves less (a valid `remaining` wins over none). */
function tighter(a: RateLimitWindow | undefined, b: RateLimitWindow | undefined): RateLimitWindow | undefined {
  if (a === undefined || b === undefined) return a ?? b;
  if (b.remaining === undefined) return a;
  if (a.remaining === undefined || b.remaining < a.remaining) return b;
  return a;
}

/** compact drops undefined fields, and returns undefined for an object left empty. */
function compact<T extends object>(o: { [K in keyof T]: T[K] | undefined }): T | undefined {
  const out: Record<string, unknown> = {};
  let any = false;
  for (const [k, v] of Object.entries(o))
    if (v !== undefined) {
      out[k] = v;
      any = true;
    }
  return any ? (out as T) : undefined;
}
