/**
 * What the AI SDK middleware reads from one language-model call: its user, its LLM-token estimate
 * and the usage it reports. Shapes are the AI SDK's `LanguageModelV4` specification
 * (`@ai-sdk/provider` 4), described structurally so that @tollgate/agent depends on no AI SDK
 * package, at run time or in its types.
 */
import { CHARS_PER_LLM_TOKEN, DEFAULT_MAX_OUTPUT_LLM_TOKENS } from './openai-llm-tokens.js';

/**
 * ModelCallParams is the part of the AI SDK's `LanguageModelV4CallOptions` (the `params` a
 * middleware receives) that Tollgate reads. Any V4 call options object is one.
 */
export interface ModelCallParams {
  /** The standardized prompt: system, user, assistant and tool messages. */
  readonly prompt: readonly unknown[];
  /** The output limit of the call, in LLM tokens. */
  readonly maxOutputTokens?: number | undefined;
  /** The tools offered to the model (their descriptions and schemas are part of the prompt). */
  readonly tools?: readonly unknown[] | undefined;
  /** Cancels the call; a caller waiting for tokens stops waiting and takes nothing. */
  readonly abortSignal?: AbortSignal | undefined;
  /** Provider-specific options, e.g. `{ openai: { safetyIdentifier: 'user-42' } }`. */
  readonly providerOptions?: Readonly<Record<string, Readonly<Record<string, unknown>>>> | undefined;
}

/** ModelUsage is the AI SDK's `LanguageModelV4Usage`: LLM tokens in and out, each maybe unknown. */
export interface ModelUsage {
  readonly inputTokens: { readonly total: number | undefined };
  readonly outputTokens: { readonly total: number | undefined };
}

/** The model a middleware wraps (`LanguageModelV4`): its id names the shared pool. */
export interface ModelLike {
  readonly provider: string;
  readonly modelId: string;
}

/**
 * userOfProviderOptions is the first string `safetyIdentifier` or `user` among a call's provider
 * options (what `@ai-sdk/openai` sends as `safety_identifier` / `user`), if any. The middleware
 * asks it after `withUser` and its `user` option.
 */
export function userOfProviderOptions(params: ModelCallParams): string | undefined {
  const byProvider = params.providerOptions;
  if (byProvider === undefined || byProvider === null) return undefined;
  for (const name in byProvider) {
    const o = byProvider[name];
    if (o === null || typeof o !== 'object') continue;
    for (const field of ['safetyIdentifier', 'user']) {
      const v = o[field];
      if (typeof v === 'string' && v !== '') return v;
    }
  }
  return undefined;
}

/**
 * estimateCallLLMTokens estimates the LLM tokens a model call will use: the characters of its
 * prompt's text (system text, text and reasoning parts, tool calls' inputs and tool results'
 * outputs as JSON; files and images are not counted) and of its tools' definitions, divided by
 * {@link CHARS_PER_LLM_TOKEN}, plus `maxOutputTokens` (else {@link DEFAULT_MAX_OUTPUT_LLM_TOKENS}).
 * At least 1.
 */
export function estimateCallLLMTokens(params: ModelCallParams): number {
  let chars = 0;
  const prompt = Array.isArray(params.prompt) ? params.prompt : [];
  for (const message of prompt) chars += messageChars(message);
  if (Array.isArray(params.tools)) for (const t of params.tools) chars += jsonChars(t);
  const max = params.maxOutputTokens;
  const output = typeof max === 'number' && Number.isFinite(max) && max >= 0 ? max : DEFAULT_MAX_OUTPUT_LLM_TOKENS;
  return Math.max(1, Math.ceil(chars / CHARS_PER_LLM_TOKEN) + output);
}

/** usageOfCall is the LLM tokens a V4 usage reports (input + output), or undefined when unknown. */
export function usageOfCall(usage: ModelUsage | undefined): number | undefined {
  if (usage === undefined || usage === null) return undefined;
  const input = usage.inputTokens?.total;
  const output = usage.outputTokens?.total;
  const known = (n: unknown): n is number => typeof n === 'number' && Number.isFinite(n) && n >= 0;
  if (!known(input) && !known(output)) return undefined;
  return (known(input) ? input : 0) + (known(output) ? output : 0);
}

function messageChars(message: unknown): number {
  if (message === null || typeof message !== 'object') return 0;
  const content = (message as { content?: unknown }).content;
  if (typeof content === 'string') return content.length; // a system message
  if (!Array.isArray(content)) return 0;
  let n = 0;
  for (const part of content) {
    if (part === null || typeof part !== 'object') continue;
    const p = part as Record<string, unknown>;
    switch (p.type) {
      case 'text':
      case 'reasoning':
        n += typeof p.text === 'string' ? p.text.length : 0;
        break;
      case 'tool-call':
        n += (typeof p.toolName === 'string' ? p.toolName.length : 0) + jsonChars(p.input);
        break;
      case 'tool-result':
        n += jsonChars(p.output);
        break;
      default:
        // Files and images: their size says nothing reliable about their LLM tokens.
        break;
    }
  }
  return n;
}

function jsonChars(value: unknown): number {
  if (typeof value === 'string') return value.length;
  try {
    return JSON.stringify(value)?.length ?? 0;
  } catch {
    return 0;
  }
}
