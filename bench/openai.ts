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
  return {
    close: () => fake.close(),
    scenario: {
      id: 'openai-overhead',
      title: 'chat.completions.create on a loopback server',
      ops,
      contenders: [
        {
          name: 'Tollgate (throttleOpenAI)',
          role: 'tollgate',
          run: (n) =>
            withUser('user-42', async () => {
              for (let i = 0; i < n; i++) await throttled.chat.completions.create(body);
            }),
        },
        {
          name: BARE,
          role: 'ceiling',
          run: async (n) => {
            for (let i = 0; i < n; i++) await bare.chat.completions.create(body);
          },
        },
      ],
    },
  };
}
