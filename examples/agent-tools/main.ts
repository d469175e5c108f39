/**
 * Decorating agent tools — `pnpm --filter @tollgate/examples run agent-tools`.
 *
 * defineTool gives the model a tool (JSON Schema from zod) that validates the model's arguments
 * before it waits or runs, and waits for the current user's token (5 calls per second, bursts of
 * 2). throttleTool throttles any async function with its signature kept: here a search index that
 * the app also calls outside the agent. runToolCalls runs one model turn's tool calls
 * concurrently within those limits and returns the tool messages in order; a bad call becomes an
 * error message for the model, and the tool does not run.
 */
import { defineTool, runToolCalls, throttleTool, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import type OpenAI from 'openai';
import { z } from 'zod';
import { connectOpenAI } from '../shared/openai.ts';

const CITIES = ['Paris', 'Oslo', 'Rome', 'Lima', 'Kyiv'];

// Offline, the loopback "model" asks for every city's weather at once, and a docs search.
const { openai, model, where, close } = await connectOpenAI({
  fake: {
    chat: (body) =>
      body.messages.at(-1)?.role === 'tool'
        ? undefined
        : {
            toolCalls: [
              ...CITIES.map((city) => ({ name: 'get_weather', arguments: { city } })),
              { name: 'search_docs', arguments: { query: 'packing list' } },
            ],
          },
  },
});
console.log(`Model calls go to ${where}.`);

const start = performance.now();
const at = () => Math.round(performance.now() - start);
const backend = new MemoryBackend();

// Tool calls: 5 per second per user, bursts of 2.
const toolLimiter = new RateLimiter({ backend, name: 'tools', policy: { rate: 5, per: '1s', capacity: 2 } });

const ran: string[] = [];
const weather = defineTool({
  name: 'get_weather',
  description: 'Today’s weather in a city.',
  parameters: z.object({ city: z.string().describe('City name, e.g. Paris') }),
  limiter: toolLimiter,
  execute: async ({ city }) => {
    ran.push(`get_weather(${city}) at ${at()} ms`);
    return JSON.stringify({ city, celsius: 10 + city.length, sky: 'clear' });
  },
});

// A plain async function, throttled with its signature kept: 10 searches per second per user.
const searchIndex = throttleTool(
  async (query: string, limit: number) => [`${query}: result 1`, `${query}: result 2`].slice(0, limit),
  { limiter: new RateLimiter({ backend, name: 'search', policy: { rate: 10, per: '1s' } }) },
);
const search = defineTool({
  name: 'search_docs',
  description: 'Search the travel docs.',
  parameters: z.object({ query: z.string() }),
  execute: async ({ query }) => {
    ran.push(`search_docs(${query}) at ${at()} ms`);
    return JSON.stringify(await searchIndex(query, 2));
  },
});

const tools = [weather, search];
const messages: OpenAI.ChatCompletionMessageParam[] = [
  { role: 'user', content: `What is the weather in ${CITIES.join(', ')}? And search the docs for a packing list.` },
];

// The tool-call loop, as alice: ask, run the tool calls the model asked for, repeat until it answers.
await withUser('alice', async () => {
  for (let turn = 0; turn < 4; turn++) {
    const res = await openai.chat.completions.create({ model, messages, tools: tools.map((t) => t.definition) });
    const message = res.choices[0]?.message;
    if (message === undefined) break;
    messages.push(message);
    if (!message.tool_calls?.length) {
      const answer = message.content ?? '';
      console.log(`answer: ${answer.length > 100 ? `${answer.slice(0, 100)}…` : answer}`);
      break;
    }
    console.log(`turn ${turn + 1}: the model asked for ${message.tool_calls.length} tool calls`);
    messages.push(...(await runToolCalls(message.tool_calls, tools)));
  }
});
for (const line of ran) console.log(`  ran ${line}`);

// What a model's bad call becomes: an error message for it, and the tool does not run.
const runsBefore = ran.length;
const [bad, malformed] = await withUser('alice', () =>
  runToolCalls(
    [
      { id: 'call_bad', type: 'function', function: { name: 'get_weather', arguments: '{"city": 42}' } },
      { id: 'call_malformed', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Par' } },
    ],
    tools,
  ),
);
console.log(`bad arguments -> ${bad?.content}`);
console.log(`malformed JSON -> ${malformed?.content}`);
console.log(`tools run for the two bad calls: ${ran.length - runsBefore}`);

await close();
