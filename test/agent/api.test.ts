/**
 * The public surface of @tollgate/agent, option validation, and per-user queue bookkeeping.
 */
import * as agent from '@tollgate/agent';
import { MemoryBackend, RateLimiter, isInvalidOptionsError } from '@tollgate/core';
import { describe, expect, test } from 'vitest';
import { PerUserQueues } from '../../packages/agent/src/per-user-queue.ts';
import { OpenAI } from './openai-client.ts';

describe('@tollgate/agent public API', () => {
  test('exports exactly these names', () => {
    expect(Object.keys(agent).sort()).toEqual([
      'ANONYMOUS_USER',
      'CHARS_PER_LLM_TOKEN',
      'DEFAULT_MAX_OUTPUT_LLM_TOKENS',
      'DEFAULT_PER_USER',
      'InvalidToolArgumentsError',
      'QueueFullError',
      'currentUser',
      'defineTool',
      'estimateLLMTokens',
      'isQueueFullError',
      'perUserStats',
      'readAnthropicRateLimits',
      'readOpenAIRateLimits',
      'runToolCalls',
      'throttleAnthropic',
      'throttleOpenAI',
      'throttleTool',
      'tollgateMiddleware',
      'usageTotal',
      'withUser',
    ]);
  });

  test('withUser sets currentUser across awaits and timers, and nests', async () => {
    expect(agent.currentUser()).toBeUndefined();
    await agent.withUser('outer', async () => {
      await new Promise((r) => setTimeout(r, 5));
      expect(agent.currentUser()).toBe('outer');
      await agent.withUser('inner', async () => expect(agent.currentUser()).toBe('inner'));
      expect(agent.currentUser()).toBe('outer');
    });
    expect(() => agent.withUser('', () => 1)).toThrow(/non-empty string/);
  });

  test('invalid throttleOpenAI options fail at once, naming the option and the value', () => {
    const client = new OpenAI({ apiKey: 'x', baseURL: 'http://127.0.0.1:9/v1' });
    const fails = (options: unknown, message: RegExp) => {
      let err: unknown;
      try {
        agent.throttleOpenAI(client, options as agent.ThrottleOpenAIOptions);
      } catch (e) {
        err = e;
      }
      expect(isInvalidOptionsError(err)).toBe(true);
      expect((err as Error).message).toMatch(message);
    };
    fails({ requests: 5 }, /requests must be a RateLimiter \(received 5\)/);
    fails({ perUser: { concurrency: 0 } }, /perUser.concurrency must be an integer >= 1 or Infinity \(received 0\)/);
    fails({ perUser: { maxQueued: -1 } }, /perUser.maxQueued must be an integer >= 0/);
    fails({ maxWaitMs: 'soon' }, /maxWaitMs must be a number of ms >= 0 \(received "soon"\)/);
    fails(
      { reqests: new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 1 } }) },
      /\(options\) unknown option\(s\) reqests/,
    );
    expect(() => agent.throttleOpenAI({} as unknown as OpenAI)).toThrow(/client must be an OpenAI client/);
  });

  test('QueueFullError is a TollgateError with a stable code', () => {
    const e = new agent.QueueFullError('u', 1, 0);
    expect(e.code).toBe('ERR_TOLLGATE_QUEUE_FULL');
    expect(e.name).toBe('QueueFullError');
    expect(e.message).toMatch(/queue of user "u" is full/);
  });
});

describe('per-user queues', () => {
  test('idle users hold no queue, so memory follows active users', async () => {
    const queues = new PerUserQueues({ concurrency: 1, maxQueued: 5 });
    const releases = await Promise.all(Array.from({ length: 500 }, (_, i) => queues.enter(`user-${i}`)));
    expect(queues.users).toBe(500);
    for (const release of releases) release();
    await new Promise((r) => setTimeout(r, 0));
    expect(queues.users).toBe(0);
  });

  test('a full queue rejects the newcomer, keeps the queued in order, and a retry may pass', async () => {
    const queues = new PerUserQueues({ concurrency: 1, maxQueued: 1 });
    const order: number[] = [];
    const first = await queues.enter('u');
    const second = queues.enter('u').then((release) => {
      order.push(2);
      release();
    });
    await expect(queues.enter('u')).rejects.toBeInstanceOf(agent.QueueFullError);
    const retry = queues.enter('u', { force: true }).then((release) => {
      order.push(3);
      release();
    });
    expect(queues.stats('u')).toEqual({ queued: 2, inFlight: 1 });
    order.push(1);
    first();
    await Promise.all([second, retry]);
    expect(order).toEqual([1, 2, 3]);
    await new Promise((r) => setTimeout(r, 0));
    expect(queues.users).toBe(0);
  });

  test('an aborted waiter leaves the queue', async () => {
    const queues = new PerUserQueues({ concurrency: 1 });
    const first = await queues.enter('u');
    const ac = new AbortController();
    const waiting = queues.enter('u', { signal: ac.signal });
    ac.abort(new Error('stop'));
    await expect(waiting).rejects.toThrow('stop');
    expect(queues.stats('u')).toEqual({ queued: 0, inFlight: 1 });
    first();
  });
});
