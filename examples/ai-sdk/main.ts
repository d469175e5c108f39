/**
 * The Vercel AI SDK — `pnpm --filter @tollgate/examples run ai-sdk` (Node >= 22, as `ai` 7 needs).
 *
 * tollgateMiddleware wraps a model with `wrapLanguageModel`: every model call of generateText,
 * streamText and each step of a tool loop waits for the current user's tokens (3 calls per
 * second in bursts of 3, 20 000 LLM tokens per minute, 2 calls in flight per user). alice bursts
 * six questions while bob asks one: alice's are spaced out, bob's is not delayed. Then a stream
 * (its LLM tokens settled from its finish part) and a tool loop whose tool is throttled per user
 * with throttleTool. Offline (no OPENAI_API_KEY) it talks to a fake OpenAI server on loopback.
 */
import { createOpenAI } from '@ai-sdk/openai';
import { throttleTool, tollgateMiddleware, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { generateText, isStepCount, streamText, tool, wrapLanguageModel } from 'ai';
import { z } from 'zod';
import { startFakeOpenAI } from '../support/fake-openai.ts';

if (Number(process.versions.node.split('.')[0]) < 22) {
  console.error(`The AI SDK (ai 7) needs Node >= 22; this is Node ${process.versions.node}.`);
  process.exit(1);
}

const online = Boolean(process.env.OPENAI_API_KEY);
const fake = online ? undefined : await startFakeOpenAI();
const openai = fake !== undefined ? createOpenAI({ baseURL: fake.baseURL, apiKey: 'offline' }) : createOpenAI();
const modelId = process.env.OPENAI_MODEL ?? 'gpt-4o-mini';
console.log(
  `Model calls go to ${fake !== undefined ? `a fake OpenAI server on ${fake.baseURL}` : `the OpenAI API (${modelId})`}.`,
);

const backend = new MemoryBackend();
const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 3, per: '1s' } });
const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 20_000, per: '1m' } });
const reserved: string[] = [];
const model = wrapLanguageModel({
  model: openai.chat(modelId),
  middleware: tollgateMiddleware({
    requests,
    llmTokens,
    perUser: { concurrency: 2, maxQueued: 50 },
    onAdmit: (e) => reserved.push(`${e.user} reserved ${e.llmTokens}`),
  }),
});

const start = performance.now();
const at = () => Math.round(performance.now() - start);
const ask = (prompt: string) => generateText({ model, prompt, maxOutputTokens: 50 }).then(at);

// alice's six questions and bob's one, all at once; each user has buckets of their own.
const [alice, bob] = await Promise.all([
  withUser('alice', () => Promise.all([1, 2, 3, 4, 5, 6].map((i) => ask(`Question ${i}?`)))),
  withUser('bob', () => ask('Hello?')),
]);
console.log(`alice: 6 calls answered at ${alice.join(', ')} ms (quota 3/s, bursts of 3)`);
console.log(`bob: 1 call answered at ${bob} ms (alice's burst does not delay bob)`);

// A stream waits like any call; its LLM-token estimate settles to the usage of its finish part.
const stream = withUser('carol', () => streamText({ model, prompt: 'Say hello in five words.', maxOutputTokens: 50 }));
let text = '';
for await (const delta of stream.textStream) text += delta;
const usage = await stream.totalUsage;
console.log(
  `stream: ${JSON.stringify(text)}; ${reserved.at(-1)} LLM tokens, settled to its usage of ${usage.totalTokens}`,
);

// A tool loop: each model call waits for a token, and so does each tool call (2 per minute per user).
const weatherLimiter = new RateLimiter({ backend, name: 'tool:weather', policy: { rate: 2, per: '1m' } });
const weather = tool({
  description: 'The current weather in a city',
  inputSchema: z.object({ city: z.string() }),
  execute: throttleTool(async ({ city }: { city: string }) => ({ city, degrees: 21 }), { limiter: weatherLimiter }),
});
const loop = await withUser('dave', () =>
  generateText({ model, tools: { weather }, stopWhen: isStepCount(4), prompt: 'What is the weather in Paris?' }),
);
const toolCalls = loop.steps.reduce((n, s) => n + s.toolCalls.length, 0);
const toolLeft = (await weatherLimiter.tryAcquire('dave')).remaining + 1;
console.log(
  `tools: ${loop.steps.length} model calls, ${toolCalls} tool call(s); dave's weather tokens left: ${toolLeft} of 2`,
);
console.log(`answer: ${loop.text}`);

await fake?.close();
