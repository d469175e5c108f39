/**
 * The OpenAI Agents SDK, throttled per user — `pnpm --filter @tollgate/examples run openai-agents`.
 *
 * An `Agent` with a weather tool runs for alice (three questions at once) and for bob (one).
 * Its model requests go through a `throttleOpenAI` client, set as the SDK's default client: each
 * user gets 4 requests per second (bursts of 2). Its tool is wrapped in `throttleTool`: each user
 * gets 10 weather look-ups per second (bursts of 3). `withUser` around `run()` says who the user
 * is; the SDK runs tools in that same async context, so the tool is counted against the right
 * user too. alice's burst is spaced out; bob's run is not delayed by it.
 *
 * `@openai/agents` depends on openai 7, which needs Node >= 22. Wrap the `OpenAI` class of that
 * same openai 7 (in your app: `import OpenAI from 'openai'` with openai 7 installed; here the
 * examples package holds it as `openai7`, next to the openai 6 the other examples use).
 *
 * Offline (no OPENAI_API_KEY), the model is the loopback server of ../support/fake-openai.ts: it
 * asks for one weather call per city named in the question, then answers with the results. It
 * speaks tool calls on Chat Completions only, so the SDK is set to that API here
 * (`setOpenAIAPI('chat_completions')`); the SDK's default, the Responses API, is throttled
 * alike (every HTTP attempt of the client is).
 */
import {
  Agent,
  type RunContext,
  run,
  setDefaultOpenAIClient,
  setOpenAIAPI,
  setTracingDisabled,
  tool,
} from '@openai/agents';
import { currentUser, throttleOpenAI, throttleTool, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import OpenAI from 'openai7';
import { z } from 'zod';
import { type FakeOpenAI, startFakeOpenAI } from '../support/fake-openai.ts';

const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
if (NODE_MAJOR < 22) {
  console.error(`This example needs Node >= 22 (@openai/agents uses openai 7); this is Node ${process.versions.node}.`);
  process.exit(1);
}

const CITIES = ['Paris', 'Oslo', 'Lima', 'Cairo', 'Tokyo', 'Quito'];

// Offline: the loopback server, asked for one get_weather call per city in the question.
let fake: FakeOpenAI | undefined;
let openai: OpenAI;
const model = process.env.OPENAI_MODEL ?? 'gpt-4o-mini';
if (process.env.OPENAI_API_KEY) {
  openai = new OpenAI();
  console.log(`Model calls go to the OpenAI API (OPENAI_API_KEY is set; model ${model}).`);
} else {
  fake = await startFakeOpenAI({
    chat: (body) => {
      const messages: { role: string; content?: unknown }[] = body.messages ?? [];
      const last = messages[messages.length - 1];
      if (last?.role !== 'user' || !Array.isArray(body.tools)) return undefined; // tool results: the default "Done: …"
      const asked = CITIES.filter((c) => String(last.content).includes(c));
      return { toolCalls: asked.map((city) => ({ name: 'get_weather', arguments: { city } })) };
    },
  });
  openai = new OpenAI({ apiKey: 'offline', baseURL: fake.baseURL });
  setTracingDisabled(true); // no API key to export traces with
  console.log(`Model calls go to a fake OpenAI server on ${fake.baseURL}.`);
}

const backend = new MemoryBackend();
// Per user: 4 model requests per second (bursts of 2), 20 000 LLM tokens a minute, and 10
// weather look-ups per second (bursts of 3).
const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 4, per: '1s', capacity: 2 } });
const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 20_000, per: '1m' } });
const toolCalls = new RateLimiter({ backend, name: 'tools', policy: { rate: 10, per: '1s', capacity: 3 } });

let start = performance.now();
const at = () => Math.round(performance.now() - start);
/** When each user's model requests were admitted, and their weather look-ups ran (ms). */
const admitted = new Map<string, number[]>();
const looked = new Map<string, number[]>();
const record = (times: Map<string, number[]>, user: string) => times.set(user, [...(times.get(user) ?? []), at()]);

// Every HTTP attempt the SDK makes through this client waits for the current user's tokens.
setDefaultOpenAIClient(throttleOpenAI(openai, { requests, llmTokens, onAdmit: (e) => record(admitted, e.user) }));
setOpenAIAPI('chat_completions');

const weatherArgs = z.object({ city: z.string().describe('City name, e.g. Paris') });

const getWeather = tool({
  name: 'get_weather',
  description: 'Today’s weather in a city.',
  parameters: weatherArgs,
  // throttleTool keys each call on the current user (withUser around run()), and stops waiting
  // when the SDK aborts the call (a tool timeout, a cancelled run). The parameter types are
  // written out: inside tool({ … }), TypeScript cannot infer them through the wrapper.
  execute: throttleTool(
    async ({ city }: z.infer<typeof weatherArgs>, _context?: RunContext, _details?: { signal?: AbortSignal }) => {
      const user = currentUser() ?? 'nobody';
      record(looked, user);
      return `${city} ${10 + city.length}°C for ${user}`;
    },
    { limiter: toolCalls, signal: (_input, _context, details) => details?.signal },
  ),
});

const agent = new Agent({
  name: 'Weather assistant',
  instructions: 'Answer with the weather of every city asked about; call get_weather once per city.',
  model,
  tools: [getWeather],
});

const ask = (user: string, question: string) => withUser(user, () => run(agent, question));

// A first run loads the SDK's lazily imported modules (a few hundred ms); times count from after it.
await ask('warm-up', 'Weather in Paris?');
start = performance.now();
for (const times of [admitted, looked]) times.clear();

// alice asks three questions at once, bob one: each run is a model request, three tool calls,
// and a model request with the results.
const [aliceRuns, bobRun] = await Promise.all([
  Promise.all([
    ask('alice', 'Weather in Paris, Oslo and Lima?'),
    ask('alice', 'Weather in Cairo, Tokyo and Quito?'),
    ask('alice', 'Weather in Oslo, Lima and Cairo?'),
  ]).then((r) => ({ results: r, doneAt: at() })),
  ask('bob', 'Weather in Paris, Tokyo and Quito?').then((r) => ({ result: r, doneAt: at() })),
]);

const times = (of: Map<string, number[]>, user: string) => {
  const t = of.get(user) ?? [];
  return `${t.length} ${of === admitted ? 'model requests admitted' : 'weather look-ups'} at ${t.join(', ')} ms`;
};
console.log(`alice: ${times(admitted, 'alice')} (quota 4/s, bursts of 2)`);
console.log(`alice: ${times(looked, 'alice')} (quota 10/s, bursts of 3)`);
console.log(
  `bob: ${times(admitted, 'bob')}, ${times(looked, 'bob')}; his run done at ${bobRun.doneAt} ms, alice's at ${aliceRuns.doneAt} ms (her burst does not delay him)`,
);
const answer = String(aliceRuns.results[0]?.finalOutput ?? '');
console.log(`answer to alice: ${answer.length > 120 ? `${answer.slice(0, 120)}…` : answer}`);
console.log(`answer to bob: ${String(bobRun.result.finalOutput ?? '')}`);

await fake?.close();
