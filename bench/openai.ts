/**
 * The `throttleOpenAI` overhead: the same chat completion against a loopback OpenAI-compatible
 * server (examples/support/fake-openai.ts), through a bare client and through a throttled one
 * (a requests limiter and an LLM-tokens limiter, in memory, neither ever waiting).
 */
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { throttleOpenAI, withUser } from '@tollgate/agent';
import OpenAI from 'openai';
import { startFakeOpenAI } from '../examples/support/fake-openai.js';
import type { Scenario } from './harness.js';

export const BARE = 'bare openai client';

export async function openaiScenario(ops: number): Promise<{ scenario: Scenario; close: () => Promise<void> }> {
  const fake = await startFakeOpenAI();
  const bare = new OpenAI({ baseURL: fake.baseURL, apiKey: 'test', maxRetries: 0 });
  const big = { rate: 1e9, per: '1h', capacity: 1e9 } as const;
  const throttled = throttleOpenAI(new OpenAI({ baseURL: fake.baseURL, apiKey: 'test', maxRetries: 0 }), {
    requests: new RateLimiter({ backend: new MemoryBackend(), policy: big, name: 'requests' }),
    llmTokens: new RateLimiter({ backend: new MemoryBackend(), policy: big, name: 'llm-tokens' }),
  });
  const body = {
    model: 'gpt-4o-mini',
    messages: [{ role: 'user' as const, content: 'Say hello in five words.' }],
    max_tokens: 32,
  };
  const runThrottled = (n: number) =>
    withUser('user-42', async () => {
      for (let i = 0; i < n; i++) await throttled.chat.completions.create(body);
    });
  const runBare = async (n: number) => {
    for (let i = 0; i < n; i++) await bare.chat.completions.create(body);
  };
  return {
    close: () => fake.close(),
    scenario: {
      id: 'openai-overhead',
      title: 'chat.completions.create on a loopback server',
      ops,
      // The SDK, undici and node:http take a few thousand calls to warm up (the first rounds ran
      // at 50–75% of the later ones, so the median of 5 depended on them): warm both alike first.
      setup: async () => {
        for (let i = 0; i < 3; i++) {
          await runThrottled(ops);
          await runBare(ops);
        }
      },
      contenders: [
        {
          name: 'Tollgate (throttleOpenAI)',
          role: 'tollgate',
          run: runThrottled,
        },
        {
          name: BARE,
          role: 'ceiling',
          run: runBare,
        },
      ],
    },
  };
}
