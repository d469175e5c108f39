/**
 * throttleOpenAI's `requests` / `llmTokens` are RateLimiter instances, used through their public
 * acquire() and refund(). A subclass that overrides them (metrics, key namespacing, a test double)
 * must see every reservation and refund, and the reservation, the refund and any excess charge
 * must land in the same bucket.
 */
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { type AcquireOptions, type Grant, MemoryBackend, RateLimiter } from '@tollgate/core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { newClient } from './openai-client.ts';

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI({ usage: { prompt_tokens: 20, completion_tokens: 30 } });
});
afterAll(() => fake.close());

/** Keeps each tenant's buckets under its own namespace. */
class Namespaced extends RateLimiter {
  acquires: string[] = [];
  refunds: string[] = [];
  override acquire(key: string, o?: AcquireOptions): Promise<Grant> {
    this.acquires.push(key);
    return super.acquire(`tenant-a:${key}`, o);
  }
  override refund(key: string, amount: number): Promise<void> {
    this.refunds.push(key);
    return super.refund(`tenant-a:${key}`, amount);
  }
}

const spentIn = async (l: RateLimiter, bucket: string) =>
  10_000 - 1 - (await RateLimiter.prototype.tryAcquire.call(l, bucket)).remaining;

test('a RateLimiter subclass sees every acquire and refund, and one bucket holds the call', async () => {
  const llmTokens = new Namespaced({ backend: new MemoryBackend(), name: 'llm', policy: { rate: 1, per: '1h', capacity: 10_000 } });
  const client = throttleOpenAI(newClient(fake.baseURL, { maxRetries: 0 }), { llmTokens });
  const ask = { model: 'm', max_tokens: 500, messages: [{ role: 'user' as const, content: 'x'.repeat(396) }] };
  await withUser('u', () => client.chat.completions.create(ask)); // estimate 600, usage 50: 550 back
  expect(llmTokens.acquires).toEqual(['u']); // HEAD: [] (the internal ACQUIRE_NOW bypasses the override)
  expect(llmTokens.refunds).toEqual(['u']); // HEAD: [] (REFUND_NOW bypasses it)
  expect(await spentIn(llmTokens, 'tenant-a:u')).toBe(50); // HEAD: 0
  expect(await spentIn(llmTokens, 'u')).toBe(0); // HEAD: 50, outside the tenant's namespace

  // Usage above the estimate: the reservation (20) and the excess charge (30) must hit one bucket.
  const small = { ...ask, max_tokens: 10, messages: [{ role: 'user' as const, content: 'y'.repeat(36) }] };
  await withUser('v', () => client.chat.completions.create(small));
  await new Promise((r) => setTimeout(r, 20));
  expect(await spentIn(llmTokens, 'tenant-a:v')).toBe(50); // HEAD: 30 (only the excess, via the public acquire)
  expect(await spentIn(llmTokens, 'v')).toBe(0); // HEAD: 20 (the reservation, via ACQUIRE_NOW)
});
