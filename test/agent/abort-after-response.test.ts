/**
 * A non-streaming 200 is generated in full before its headers are sent: the provider has counted
 * its LLM tokens. A caller who aborts its signal after the response arrived (a proxy whose own
 * client went away, a UI cancel) must not get those tokens back.
 */
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { newClient } from './openai-client.ts';

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI({ usage: { prompt_tokens: 20, completion_tokens: 30 } });
});
afterAll(() => fake.close());

const ask = { model: 'm', max_tokens: 500, messages: [{ role: 'user' as const, content: 'x'.repeat(396) }] }; // estimate 600

test('an abort after a 200 arrived does not give back the LLM tokens the provider counted', async () => {
  const llmTokens = new RateLimiter({ backend: new MemoryBackend(), name: 'llm', policy: { rate: 1, per: '1h', capacity: 10_000 } });
  const client = throttleOpenAI(newClient(fake.baseURL, { maxRetries: 0 }), { llmTokens });
  await withUser('u', async () => {
    const ac = new AbortController();
    const raw = await client.chat.completions.create(ask, { signal: ac.signal }).asResponse();
    expect(raw.status).toBe(200);
    ac.abort();
    await raw.json().catch(() => undefined); // HEAD: rejects (AbortError): the body was never read
  });
  await new Promise((r) => setTimeout(r, 10));
  const spent = 10_000 - 1 - (await llmTokens.tryAcquire('u')).remaining;
  expect(spent).toBeGreaterThanOrEqual(50); // HEAD: 0 — the whole estimate went back; the provider billed 50
});
