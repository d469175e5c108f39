/**
 * Wrapping an Anthropic client — `pnpm --filter @tollgate/examples run anthropic-client`.
 *
 * throttleAnthropic throttles the client it is given (and returns it, same type), with the same
 * options as throttleOpenAI: every HTTP attempt waits for the current user's tokens: 3 requests
 * per second (bursts of 3) and 20 000 LLM tokens per minute, per user.
 * alice bursts six questions while bob asks one: alice's are spaced out, bob's is not delayed.
 * Then messages.stream (throttled alike, its LLM tokens settled from the usage of its
 * message_delta event), countTokens (a request token, no LLM tokens), and offline a 429 the SDK
 * retries — the retry waits for a token too. With ANTHROPIC_API_KEY set, it calls the real API.
 */
import { type AdmitEvent, throttleAnthropic, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { connectAnthropic } from '../shared/anthropic.ts';

const { anthropic, model, fake, where, close } = await connectAnthropic();
console.log(`Model calls go to ${where}.`);

const backend = new MemoryBackend();
const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 3, per: '1s' } });
const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 20_000, per: '1m' } });
const admitted: AdmitEvent[] = [];
const claude = throttleAnthropic(anthropic, { requests, llmTokens, onAdmit: (e) => admitted.push(e) });

const ask = (content: string) =>
  claude.messages.create({ model, max_tokens: 50, messages: [{ role: 'user', content }] });

const start = performance.now();
const at = () => Math.round(performance.now() - start);

// alice's six questions and bob's one, all at once; each user has a bucket of their own.
const [alice, bob] = await Promise.all([
  withUser('alice', () => Promise.all([1, 2, 3, 4, 5, 6].map((i) => ask(`Question ${i}?`).then(at)))),
  withUser('bob', () => ask('Hello?').then(at)),
]);
console.log(`alice: 6 requests answered at ${alice.join(', ')} ms (quota 3/s, bursts of 3)`);
console.log(`bob: 1 request answered at ${bob} ms (alice's burst does not delay bob)`);

// The stream's request starts when stream() is called: that is where the user is set.
const stream = withUser('dave', () =>
  claude.messages.stream({ model, max_tokens: 50, messages: [{ role: 'user', content: 'Say hello in five words.' }] }),
);
let deltas = 0;
stream.on('text', () => deltas++);
const message = await stream.finalMessage();
const text = message.content.map((block) => (block.type === 'text' ? block.text : '')).join('');
console.log(`stream: ${deltas} text deltas, ${JSON.stringify(text)}`);
const { usage } = message;
const charged = usage.input_tokens + (usage.cache_creation_input_tokens ?? 0) + usage.output_tokens;
console.log(
  `stream LLM tokens: reserved ${admitted.at(-1)?.llmTokens} before sending, settled to its usage of ${charged} ` +
    `(input ${usage.input_tokens} + cache creation ${usage.cache_creation_input_tokens ?? 0} + output ${usage.output_tokens}; cache reads not charged)`,
);

const counted = await withUser('dave', () =>
  claude.messages.countTokens({ model, messages: [{ role: 'user', content: 'How many tokens is this?' }] }),
);
console.log(`countTokens: ${counted.input_tokens} input tokens, ${admitted.at(-1)?.llmTokens} LLM tokens reserved`);

// Offline only: the model answers 429 once; the SDK's retry is a new attempt and waits its turn.
if (fake !== undefined) {
  fake.rateLimitNext(model, 1, { retryAfterMs: 10 });
  const before = fake.requests.length;
  await withUser('carol', () => ask('Retry me?'));
  console.log(`retry: carol's call took ${fake.requests.length - before} HTTP attempts, each throttled`);
}

await close();
