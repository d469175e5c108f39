/**
 * The loopback OpenAI server's answers to `POST /v1/responses` (fake-openai.ts): the response
 * object, and the Responses API events of its stream (usage in `response.completed`).
 */
import type { Json, SSEvent } from './http.ts';

/**
 * responsesAnswer builds the answer `text` to a Responses API request: the JSON of a plain call
 * and the events of a streamed one. `u` is the usage in chat-completion names; `nextId` makes ids.
 */
export function responsesAnswer(
  body: Json,
  text: string,
  u: { prompt_tokens: number; completion_tokens: number },
  nextId: (prefix: string) => string,
): { json: object; events: SSEvent[] } {
  const usage = {
    input_tokens: u.prompt_tokens,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: u.completion_tokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: u.prompt_tokens + u.completion_tokens,
  };
  const id = nextId('resp');
  const msgId = nextId('msg');
  const model = typeof body.model === 'string' ? body.model : 'gpt-fake';
  const part = { type: 'output_text', text, annotations: [], logprobs: [] };
  const item = {
    id: msgId,
    type: 'message',
    status: 'completed',
    role: 'assistant',
    content: [part],
  };
  const response = (status: string, output: object[], withUsage: boolean) => ({
    id,
    object: 'response',
    created_at: Math.floor(Date.now() / 1000),
    status,
    error: null,
    incomplete_details: null,
    instructions: body.instructions ?? null,
    max_output_tokens: body.max_output_tokens ?? null,
    model,
    output,
    parallel_tool_calls: true,
    temperature: 1,
    tool_choice: 'auto',
    tools: [],
    top_p: 1,
    text: { format: { type: 'text' } },
    usage: withUsage ? usage : null,
  });
  const json = { ...response('completed', [item], true), output_text: text };
  let n = 0;
  const ev = (type: string, fields: object): SSEvent => ({
    event: type,
    data: { type, sequence_number: n++, ...fields },
  });
  const events = [
    ev('response.created', { response: response('in_progress', [], false) }),
    ev('response.in_progress', {
      response: response('in_progress', [], false),
    }),
    ev('response.output_item.added', {
      output_index: 0,
      item: { ...item, status: 'in_progress', content: [] },
    }),
    ev('response.content_part.added', {
      item_id: msgId,
      output_index: 0,
      content_index: 0,
      part: { ...part, text: '' },
    }),
    ...(text.match(/\S+\s*/g) ?? []).map((delta) =>
      ev('response.output_text.delta', {
        item_id: msgId,
        output_index: 0,
        content_index: 0,
        delta,
        logprobs: [],
      }),
    ),
    ev('response.output_text.done', {
      item_id: msgId,
      output_index: 0,
      content_index: 0,
      text,
      logprobs: [],
    }),
    ev('response.content_part.done', {
      item_id: msgId,
      output_index: 0,
      content_index: 0,
      part,
    }),
    ev('response.output_item.done', { output_index: 0, item }),
    ev('response.completed', {
      response: response('completed', [item], true),
    }),
  ];
  return { json, events };
}
