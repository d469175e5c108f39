/**
 * Wrapping an OpenAI client — `pnpm --filter @tollgate/examples run openai-client`.
 *
 * throttleOpenAI throttles the client it is given (and returns it, same type): every HTTP attempt
 * waits for the current user's tokens: 3 requests per second (bursts of 3) and 20 000 LLM tokens
 * per minute, per user.
 * alice bursts six questions while bob asks one: alice's are spaced out, bob's is not delayed.
 * Then a stream (throttled alike, its LLM tokens settled from the final usage chunk), and offline
 * a 429 the SDK retries — the retry waits for a token too.
 */
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { connectOpenAI } from '../shared/openai.ts';

const { openai, model, fake, where, close } = await connectOpenAI();
console.log(`Model calls go to ${where}.`);

const backend = new MemoryBackend();
const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 3, per: '1s' } });
const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 20_000, per: '1m' } });
const client = throttleOpenAI(openai, { requests, llmTokens });

const ask = (content: string) =>
  client.chat.completions.create({ model, messages: [{ role: 'user', content }], max_completion_tokens: 50 });

const start = performance.now();
const at = () => Math.round(performance.now() - start);

// alice's six questions and bob's one, all at once; each user has a bucket of their own.
const [alice, bob] = await Promise.all([
  withUser('alice', () => Promise.all([1, 2, 3, 4, 5, 6].map((i) => ask(`Question ${i}?`).then(at)))),
  withUser('bob', () => ask('Hello?').then(at)),
]);
console.log(`alice: 6 requests answered at ${alice.join(', ')} ms (quota 3/s, bursts of 3)`);
console.log(`bob: 1 request answered at ${bob} ms (alice's burst does not delay bob)`);

// A stream waits for its tokens like any request; the caller sees the chunks it asked for.
const stream = await withUser('alice', () =>
  client.chat.completions.create({
    model,
    messages: [{ role: 'user', content: 'Say hello in five words.' }],
    max_completion_tokens: 50,
    stream: true,
  }),
);
let text = '';
let chunks = 0;
for await (const chunk of stream) {
  chunks++;
  text += chunk.choices[0]?.delta?.content ?? '';
}
console.log(`stream: ${chunks} chunks, ${JSON.stringify(text)}`);

// Offline only: the server answers 429 once; the SDK's retry is a new attempt and waits its turn.
if (fake !== undefined) {
  fake.failNext(1, 429, { 'retry-after-ms': '10' });
  const before = fake.requests.length;
  await withUser('carol', () => ask('Retry me?'));
  console.log(`retry: carol's call took ${fake.requests.length - before} HTTP attempts, each throttled`);
}

await close();
