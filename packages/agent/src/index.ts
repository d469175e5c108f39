/**
 * @tollgate/agent: throttle an LLM agent per user — the OpenAI client (every HTTP attempt, LLM
 * tokens settled from usage), agent tools (validated with zod, then throttled), and per-user
 * queues — and keep all users under the provider's own limits, shared fairly (`shared` pools
 * steered by the provider's rate-limit headers). Calls queue; only a full queue or a caller's
 * deadline says no.
 */
export { throttleAnthropic } from './adapters/anthropic.js';
export type { AnthropicClientLike, ThrottleAnthropicOptions } from './adapters/anthropic.js';
export { tollgateMiddleware } from './adapters/ai-sdk.js';
export type {
  ModelCallAdmitEvent,
  ModelCallParams,
  TollgateMiddleware,
  TollgateMiddlewareOptions,
} from './adapters/ai-sdk.js';
export { QueueFullError, isQueueFullError } from './errors.js';
export {
  CHARS_PER_LLM_TOKEN,
  DEFAULT_MAX_OUTPUT_LLM_TOKENS,
  estimateLLMTokens,
  usageTotal,
} from './adapters/openai-llm-tokens.js';
export { perUserStats, throttleOpenAI } from './adapters/openai.js';
export type { OpenAIClientLike, ThrottleOpenAIOptions } from './adapters/openai.js';
export type { AdmitEvent, SharedPools, ThrottleOptions } from './pipeline/options.js';
// For clients Tollgate does not wrap: read a response's headers, pass them to SharedLimiter.observe.
export { readAnthropicRateLimits, readOpenAIRateLimits } from './rate-limit-headers.js';
export type { HeadersLike, ProviderRateLimits, RateLimitWindow } from './rate-limit-headers.js';
export { DEFAULT_PER_USER } from './per-user-queue.js';
export type { PerUserOptions } from './per-user-queue.js';
export { InvalidToolArgumentsError, defineTool, runToolCalls, throttleTool } from './tools.js';
export type { ToolArgs, ToolSchema, ToolSchemaResult } from './tool-schema.js';
export type {
  FunctionToolDefinition,
  RunToolCallsOptions,
  RunnableTool,
  ThrottleToolOptions,
  Tool,
  ToolCallLike,
  ToolConfig,
  ToolContext,
  ToolErrorType,
  ToolMessage,
} from './tools.js';
export { ANONYMOUS_USER, currentUser, withUser } from './user-context.js';
