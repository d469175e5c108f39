/**
 * The anthropic-client example as a user runs it: a child process, offline (no
 * ANTHROPIC_API_KEY) and, with the key set, against the API it names (here a loopback server
 * through ANTHROPIC_BASE_URL: no network). It must exit 0 on its own and print numbers that show
 * the throttling happened.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type FakeAnthropic, startFakeAnthropic } from '../../examples/support/fake-anthropic.ts';
import { explain, lineStarting, numbers, runExample } from '../support/examples.ts';

/** example runs anthropic-client/main.ts offline, or with the ANTHROPIC_* variables of `env`. */
const example = (env: NodeJS.ProcessEnv = {}) => runExample('anthropic-client/main.ts', [], env);

describe('anthropic-client example', () => {
  test("offline: a user's burst is spaced to 3 requests/s, another user is not delayed, a stream settles, countTokens spends no LLM tokens, a 429 is retried", async () => {
    const r = await example();
    expect(r.code, explain(r)).toBe(0);
    expect(r.stdout).toContain('Model calls go to a fake Anthropic server on http://127.0.0.1:');
    const alice = numbers(lineStarting(r.stdout, 'alice:').split('answered at')[1] ?? '').slice(0, 6);
    expect(alice).toHaveLength(6);
    alice.sort((a, b) => a - b);
    const [first, , third, fourth, , sixth] = alice as [number, number, number, number, number, number];
    // Bursts of 3, then one every 333 ms: the 4th and 6th wait ~333 and ~1000 ms (times are from
    // just before the first request, so these lower bounds are exact); the first three came as a
    // burst. The upper bound leaves room for a machine 3× slower than a quiet one.
    expect(third - first).toBeLessThan(600);
    expect(fourth).toBeGreaterThanOrEqual(330);
    expect(sixth).toBeGreaterThanOrEqual(995);
    expect(sixth).toBeLessThan(3500);
    const [bob] = numbers(lineStarting(r.stdout, 'bob:')) as [number];
    expect(bob).toBeLessThan(fourth);
    expect(lineStarting(r.stdout, 'stream:')).toMatch(
      /^stream: \d+ text deltas, "Hello from the fake Anthropic server\."$/,
    );
    // 'Say hello in five words.' + 'user': 28 characters, 7 LLM tokens, + max_tokens 50 = 57;
    // the server's usage: 6 input (its count has no role) + 10 output.
    expect(numbers(lineStarting(r.stdout, 'stream LLM tokens:')).slice(0, 5)).toEqual([57, 16, 6, 0, 10]);
    expect(numbers(lineStarting(r.stdout, 'countTokens:'))).toEqual([6, 0]);
    expect(numbers(lineStarting(r.stdout, 'retry:'))[0]).toBe(2);
  });

  describe('with ANTHROPIC_API_KEY set', () => {
    let api: FakeAnthropic;
    beforeAll(async () => {
      api = await startFakeAnthropic();
    });
    afterAll(async () => {
      await api?.close();
    });

    test('it starts no server of its own and calls the configured API with the key', async () => {
      const r = await example({
        ANTHROPIC_API_KEY: 'sk-ant-test',
        ANTHROPIC_BASE_URL: api.baseURL,
        ANTHROPIC_MODEL: 'claude-test',
      });
      expect(r.code, explain(r)).toBe(0);
      expect(r.stdout).toContain('the Anthropic API (ANTHROPIC_API_KEY is set; model claude-test)');
      expect(r.stdout).not.toContain('a fake Anthropic server on');
      expect(r.stdout).not.toContain('retry:');
      // 7 messages, a stream and a token count.
      expect(api.requests).toHaveLength(9);
      for (const req of api.requests) {
        expect(req.headers.authorization).toBe('Bearer sk-ant-test');
        expect(req.body?.model).toBe('claude-test');
      }
    });
  });
});
