/**
 * The default answer of the loopback OpenAI server's chat completions (fake-openai.ts): a call of
 * the first offered tool with arguments made from its JSON schema, or text.
 */
import type { Json } from './http.ts';

/** What one chat completion answers: text, or tool calls. */
export interface FakeChatReply {
  /** The assistant's text (ignored when `toolCalls` is non-empty). */
  content?: string;
  /** Tool calls to make; `arguments` is sent as given when a string, else JSON-encoded. */
  toolCalls?: { name: string; arguments: unknown }[];
}

/** The text a chat completion answers by default. */
export const DEFAULT_TEXT = 'Hello from the fake OpenAI server.';

/** defaultChatReply calls the first offered tool unless the conversation ends with tool results. */
export function defaultChatReply(body: Json, messages: Json[]): FakeChatReply {
  const tools: Json[] = Array.isArray(body.tools) ? body.tools : [];
  const last = messages[messages.length - 1];
  if (tools.length > 0 && last?.role !== 'tool' && body.tool_choice !== 'none') {
    const fn = tools.find((t) => t?.type === 'function')?.function;
    if (fn !== undefined)
      return {
        toolCalls: [{ name: fn.name, arguments: sampleFromSchema(fn.parameters) }],
      };
  }
  if (last?.role === 'tool') {
    const results = messages
      .slice(messages.findLastIndex((m) => m?.role !== 'tool') + 1)
      .map((m) => (typeof m.content === 'string' ? m.content : JSON.stringify(m.content)));
    return { content: `Done: ${results.join('; ')}` };
  }
  return { content: DEFAULT_TEXT };
}

/** sampleFromSchema makes a value that satisfies a simple JSON schema (objects, scalars, enums). */
function sampleFromSchema(schema: Json): unknown {
  if (schema === null || typeof schema !== 'object') return {};
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0];
  if (schema.const !== undefined) return schema.const;
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case 'string':
      return 'Paris';
    case 'number':
      return typeof schema.minimum === 'number' ? schema.minimum : 1;
    case 'integer':
      return typeof schema.minimum === 'number' ? Math.ceil(schema.minimum) : 1;
    case 'boolean':
      return true;
    case 'array':
      return [sampleFromSchema(schema.items)];
    case 'null':
      return null;
    default: {
      const out: Record<string, unknown> = {};
      const props = schema.properties ?? {};
      const required: string[] = Array.isArray(schema.required) ? schema.required : Object.keys(props);
      for (const k of required) out[k] = sampleFromSchema(props[k]);
      return out;
    }
  }
}
