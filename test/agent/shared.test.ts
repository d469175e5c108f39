/**
 * throttleOpenAI with `shared` pools: a real openai client against the loopback OpenAI server
 * (which enforces per-model limits with OpenAI's headers where a test sets `limits`). Nothing
 * here mocks the client or the limiter.
 *
 * Timing: counts against b + r·T (exact upper bounds), shares as ratios with wide margins, and
 * pauses asserted from the server's own arrival times with margins that hold on a busy machine.
 */
import { throttleOpenAI, withUser } from '@tollgate/agent';
import {
  MemoryBackend,
  type PolicyInput,
  type PoolObservation,
  SharedLimiter,
  isInvalidOptionsError,
} from '@tollgate/core';
import { afterEach, describe, expect, test } from 'vitest';
import {
  type FakeOpenAI,
  type FakeOpenAIOptions,
  type RecordedRequest,
  startFakeOpenAI,
} from '../../examples/support/fake-openai.ts';
import { runStorm } from '../workers/agent-shared-storm.ts';
import { OPENAI_MAJOR, newClient } from './openai-client.ts';

const MODEL = 'gpt-4o-mini';
const OTHER = 'gpt-4o';
/** A pool's refill too slow to matter within a test: what is left is what the calls took. */
const FROZEN = '1000d';

const servers: FakeOpenAI[] = [];
async function server(opts: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const s = await startFakeOpenAI({ usage: { prompt_tokens: 20, completion_tokens: 30 }, ...opts });
  servers.push(s);
  return s;
}
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

const pool = (
  policy: PolicyInput | ((model: string) => PolicyInput | undefined),
  weight?: (key: string) => number,
  name = 'openai-requests',
) => new SharedLimiter({ backend: new MemoryBackend(), name, policy, ...(weight !== undefined ? { weight } : {}) });

const chat = (model: string, content: string, user?: string) => ({
  model,
  messages: [{ role: 'user' as const, content }],
  ...(user !== undefined ? { user } : {}),
});

/** left reads the whole tokens in `model`'s pool without changing it (on a frozen refill). */
async function left(limiter: SharedLimiter, model: string): Promise<number> {
  const d = await limiter.tryAcquire('probe', { pool: model });
  if (!d.allowed) return d.remaining;
  await limiter.refund('probe', 1, { pool: model });
  return d.remaining + 1;
}

/** loops runs `n` concurrent loops of `call` until `ms` from now. */
async function loops(n: number, ms: number, call: (i: number) => Promise<unknown>): Promise<void> {
  const until = performance.now() + ms;
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      while (performance.now() < until) await call(i);
    }),
  );
}

/** The server's arrivals for `model` (chat requests), in order. */
const arrivals = (fake: FakeOpenAI, model: string): RecordedRequest[] =>
  fake.requests.filter((r) => r.body?.model === model);

/** countBy counts `rs` by the tenant before the '/' of the body's user. */
function countBy(
  rs: RecordedRequest[],
  from: number,
  to: number,
  tenantOf = (user: string) => user.split('/')[0] as string,
) {
  const n: Record<string, number> = {};
  for (const r of rs) {
    if (r.time < from || r.time >= to || r.status !== 200) continue;
    const t = tenantOf(String(r.body?.user ?? ''));
    n[t] = (n[t] ?? 0) + 1;
  }
  return n;
}

/** Heard is a SharedLimiter that records when it was told to pause (`retryAfterMs`). */
class Heard extends SharedLimiter {
  readonly heardAt: number[] = [];
  override observe(pool: string, said: PoolObservation): Promise<void> {
    if ((said.retryAfterMs ?? 0) > 0) this.heardAt.push(performance.now());
    return super.observe(pool, said);
  }
}

describe(`throttleOpenAI with shared pools (openai ${OPENAI_MAJOR})`, () => {
  test("one user's burst is paced at the pool's rate, and another user's call waits its share, not the backlog", async () => {
    const fake = await server();
    // 10 requests/s for the whole organisation, bursts of 2: alice's 12 calls take ~1 s.
    const requests = pool({ rate: 10, per: '1s', capacity: 2 });
    const client = throttleOpenAI(newClient(fake.baseURL), { shared: { requests } });
    const t0 = performance.now();
    const burst = withUser('alice', () =>
      Promise.all(Array.from({ length: 12 }, (_, i) => client.chat.completions.create(chat(MODEL, `a-${i}`)))),
    );
    await new Promise((r) => setTimeout(r, 150));
    await withUser('bob', () => client.chat.completions.create(chat(MODEL, 'b')));
    await burst;
    const times = arrivals(fake, MODEL).map((r) => r.time - t0);
    expect(times).toHaveLength(13);
    // Never more than b + r·T by time T (an exact bound: the pool cannot grant more).
    for (const [i, at] of times.entries()) expect(i + 1).toBeLessThanOrEqual(2 + (10 * at) / 1000 + 1e-6);
    expect(times[12]).toBeGreaterThanOrEqual(1000 - 1);
    // bob asked 150 ms in, with ~9 of alice's calls queued: his share (two keys, turns alternate)
    // brings him in after one or two of them, not after all 9.
    const order = arrivals(fake, MODEL).map((r) => r.body?.messages?.[0]?.content);
    expect(order.length - 1 - order.indexOf('b')).toBeGreaterThanOrEqual(5);
  });

  test('a tenant of weight 2 gets about twice the pool of a tenant of weight 1 when both are backlogged', async () => {
    const fake = await server();
    const requests = pool({ rate: 20, per: '1s', capacity: 2 }, (tenant) => (tenant === 'pro' ? 2 : 1));
    const client = throttleOpenAI(newClient(fake.baseURL), {
      shared: { requests },
      shareKey: (user) => user.split('/')[0] as string,
    });
    const t0 = performance.now();
    await loops(8, 2500, (i) => {
      const user = `${i < 4 ? 'pro' : 'free'}/${i}`;
      return withUser(user, () => client.chat.completions.create(chat(MODEL, 'x', user)));
    });
    const n = countBy(arrivals(fake, MODEL), t0 + 300, t0 + 2500);
    const pro = n.pro ?? 0;
    const free = n.free ?? 0;
    // 20/s over 2.2 s is 44: at least half of it (work-conserving), and split 2 : 1.
    expect(pro + free).toBeGreaterThan(22);
    expect(pro / free).toBeGreaterThan(1.4);
    expect(pro / free).toBeLessThan(2.8);
    const all = arrivals(fake, MODEL).map((r) => r.time - t0);
    expect(all.length).toBeLessThanOrEqual(2 + (20 * Math.max(...all)) / 1000 + 1);
  });

  test('shareKey maps users to tenants: two users of one tenant share one share', async () => {
    const fake = await server();
    const requests = pool({ rate: 20, per: '1s', capacity: 2 });
    const tenantOf = (user: string) => (user.startsWith('carol') ? 'globex' : 'acme');
    const client = throttleOpenAI(newClient(fake.baseURL), { shared: { requests }, shareKey: tenantOf });
    const t0 = performance.now();
    await loops(9, 2500, (i) => {
      const user = `${['alice', 'bob', 'carol'][i % 3]}/${i}`;
      return withUser(user, () => client.chat.completions.create(chat(MODEL, 'x', user)));
    });
    const n = countBy(arrivals(fake, MODEL), t0 + 300, t0 + 2500);
    const acme = (n.alice ?? 0) + (n.bob ?? 0);
    const globex = n.carol ?? 0;
    // Per user it would be 2 : 1; per tenant it is 1 : 1.
    expect(acme / globex).toBeGreaterThan(0.65);
    expect(acme / globex).toBeLessThan(1.5);
  });

  test("LLM tokens are reserved in the pool from the call's estimate (capped at the pool's capacity) and settled to its usage", async () => {
    const fake = await server({ latencyMs: (r) => (r.body?.messages?.[0]?.content === 'slow' ? 300 : 0) });
    const requests = pool({ rate: 1000, per: FROZEN });
    const llmTokens = pool({ rate: 100_000, per: FROZEN }, undefined, 'openai-llm-tokens');
    const client = throttleOpenAI(newClient(fake.baseURL), {
      shared: { requests, llmTokens },
      estimateLLMTokens: () => 500,
    });
    await withUser('alice', () => client.chat.completions.create(chat(MODEL, 'hi')));
    await withUser('bob', () => client.chat.completions.create(chat(MODEL, 'hi')));
    // Each reserved 500, settled to 20 + 30 = 50.
    expect(await left(llmTokens, MODEL)).toBe(100_000 - 2 * 50);
    expect(await left(requests, MODEL)).toBe(1000 - 2);
    expect(await left(llmTokens, OTHER)).toBe(100_000);
    // A stream settles to its usage chunk too.
    const stream = await withUser('alice', () =>
      client.chat.completions.create({ ...chat(MODEL, 'hi'), stream: true }),
    );
    for await (const _ of stream) {
      // drain
    }
    expect(await left(llmTokens, MODEL)).toBe(100_000 - 3 * 50);

    // A pool of 300 LLM tokens: a 500 estimate reserves all 300 while in flight, then settles to 50.
    const small = pool({ rate: 300, per: FROZEN }, undefined, 'small-llm');
    const capped = throttleOpenAI(newClient(fake.baseURL), {
      shared: { llmTokens: small },
      estimateLLMTokens: () => 500,
    });
    const slow = withUser('carol', () => capped.chat.completions.create(chat(MODEL, 'slow')));
    await new Promise((r) => setTimeout(r, 150));
    expect(await left(small, MODEL)).toBe(0);
    await slow;
    expect(await left(small, MODEL)).toBe(300 - 50);

    // A failed attempt gives its LLM tokens back; the request it spent stays (the provider saw it).
    fake.failNext(1, 500);
    await expect(
      withUser('dave', () => client.chat.completions.create(chat(MODEL, 'hi'), { maxRetries: 0 })),
    ).rejects.toMatchObject({ status: 500 });
    expect(await left(llmTokens, MODEL)).toBe(100_000 - 3 * 50);
    expect(await left(requests, MODEL)).toBe(1000 - 4);
  });

  test('pools are per model: a backlog on one model does not delay another, and a request without a model draws on none', async () => {
    const fake = await server();
    const requests = pool((model) =>
      model === MODEL || model === OTHER ? { rate: 5, per: '1s', capacity: 1 } : undefined,
    );
    const client = throttleOpenAI(newClient(fake.baseURL), { shared: { requests } });
    const t0 = performance.now();
    const backlog = withUser('alice', () =>
      Promise.all(Array.from({ length: 8 }, (_, i) => client.chat.completions.create(chat(MODEL, `m-${i}`)))),
    );
    await new Promise((r) => setTimeout(r, 100));
    await withUser('alice', () => client.chat.completions.create(chat(OTHER, 'other')));
    const otherAt = (fake.requests.find((r) => r.body?.model === OTHER)?.time ?? Number.POSITIVE_INFINITY) - t0;
    // No model: no pool (the fake answers it like any chat).
    await withUser('alice', () =>
      client.chat.completions.create({ messages: [{ role: 'user', content: 'no model' }] } as never),
    );
    await backlog;
    const mini = arrivals(fake, MODEL).map((r) => r.time - t0);
    // The backlog of 8 at 5/s takes 1.4 s; the other model's call waited for none of it.
    expect(mini[7]).toBeGreaterThanOrEqual(1400 - 1);
    expect(mini.filter((at) => at > otherAt).length).toBeGreaterThanOrEqual(4);
    expect(fake.requests.filter((r) => r.body?.model === undefined)).toHaveLength(1);
  });

  test("the provider's headers steer a pool set 2× too high: no 429 storm after the first responses, against the bare client's", async () => {
    // Interleaved, as the machine is noisy: the bare client, then Tollgate, each 3 s.
    const bare = await runStorm({ tollgate: false, ms: 3000 });
    const tollgate = await runStorm({ tollgate: true, ms: 3000 });
    // The bare clients, same load: most of their attempts are 429s, and callers see them.
    expect(bare.steady.rateLimited / bare.steady.attempts).toBeGreaterThan(0.3);
    expect(Object.values(bare.callerErrors).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    // Tollgate: after the first responses, 429s at most a few % of attempts (+2: on a loaded
    // machine the server, in this process, may see attempts bunched by a stalled event loop).
    expect(tollgate.steady.rateLimited).toBeLessThanOrEqual(0.05 * tollgate.steady.attempts + 2);
    expect(bare.steady.rateLimited).toBeGreaterThan(10 * Math.max(1, tollgate.steady.rateLimited));
    // Goodput near the provider's 10/s (wide margin for a busy machine), never above what it allows.
    expect(tollgate.steady.okPerSecond).toBeGreaterThan(7);
    expect(tollgate.steady.okPerSecond).toBeLessThan(10 * 1.2 + 1);
    // Tenants 2 : 1 : 1.
    const { gold = 0, silver = 0, bronze = 0 } = tollgate.tenants;
    expect(gold / (silver + bronze)).toBeGreaterThan(0.6);
    expect(gold / (silver + bronze)).toBeLessThan(1.6);
    // No caller of the throttled client saw an error.
    expect(tollgate.callerErrors).toEqual({});
  }, 30_000);

  test("a 429's retry-after-ms: 1500 stops every caller of that model for 1.5 s, the 429'd call's retry is not held twice, and all resume", async () => {
    const fake = await server({ limits: { [MODEL]: { requests: 20, windowMs: 1000 } } });
    const requests = new Heard({
      backend: new MemoryBackend(),
      name: 'openai-requests',
      policy: { rate: 20, per: '1s' },
    });
    const options = { shared: { requests }, shareKey: (user: string) => user.split('/')[0] as string };
    // Two clients sharing the pools: "any caller".
    const clients = [
      throttleOpenAI(newClient(fake.baseURL), options),
      throttleOpenAI(newClient(fake.baseURL), options),
    ];
    const t0 = performance.now();
    let seq = 0;
    const errors: unknown[] = [];
    setTimeout(() => fake.rateLimitNext(MODEL, 1, { retryAfterMs: 1500 }), 600);
    await loops(8, 3500, async (i) => {
      const user = `${i % 2 === 0 ? 'acme' : 'globex'}/${i}`;
      const model = i === 7 ? OTHER : MODEL;
      const client = clients[i % 2] as (typeof clients)[number];
      await withUser(user, () => client.chat.completions.create(chat(model, `c-${seq++}`, user))).catch((e: unknown) =>
        errors.push(e),
      );
    });
    expect(errors).toEqual([]);
    const mini = arrivals(fake, MODEL);
    // The forced one (a start-up burst may meet a natural 429 or two, with short retry times).
    const forced = mini.find((r) => r.status === 429 && r.time >= t0 + 590) as RecordedRequest;
    expect(forced).toBeDefined();
    const T = forced.time;
    // The pause starts when a client reads the 429 (the server runs in this busy process, so
    // that can be tens of ms after it was sent); attempts admitted before may still arrive for a
    // while on a busy machine. From 700 ms after it was read until 1.5 s after the 429, nothing.
    const heardAt = Math.min(...requests.heardAt.filter((t) => t >= T));
    const heard = heardAt - T;
    expect(heard).toBeGreaterThanOrEqual(0);
    expect(heard).toBeLessThan(800);
    expect(mini.filter((r) => r.time > heardAt + 700 && r.time < T + 1480).map((r) => r.time - T)).toEqual([]);
    // Then all resume, and the 429'd call's retry comes right after its own sleep of 1.5 s, not 3 s.
    expect(mini.filter((r) => r.time >= T + 1480).length).toBeGreaterThan(10);
    const retry = mini.find(
      (r) => r.time > T && r.body?.messages?.[0]?.content === forced.body?.messages?.[0]?.content,
    );
    expect((retry?.time ?? Number.POSITIVE_INFINITY) - T).toBeGreaterThanOrEqual(1480);
    expect((retry?.time ?? Number.POSITIVE_INFINITY) - T).toBeLessThan(2700);
    // The other model went on meanwhile.
    expect(arrivals(fake, OTHER).filter((r) => r.time > T + 300 && r.time < T + 1400).length).toBeGreaterThan(0);
    expect(t0).toBeLessThan(T);
  }, 30_000);

  test("callers granted during a pause start at its end on the bucket's level then: capacity in all, not capacity + theirs", async () => {
    const requests = pool({ rate: 10, per: '1s' });
    for (let i = 0; i < 10; i++) await requests.acquire('drain', { pool: MODEL });
    const resume = performance.now() + 1500;
    await requests.observe(MODEL, { retryAfterMs: 1500 });
    // Four keys ask during the pause: each is granted, to start at its end.
    await Promise.all(['a', 'b', 'c', 'd'].map((k) => requests.acquire(k, { pool: MODEL })));
    expect(performance.now()).toBeGreaterThanOrEqual(resume - 1);
    // At the resume, the bucket (capacity 10) has room for 10 - 4 more, not 10, plus what it
    // refilled (10/s) by the end of the loop on a busy machine.
    let allowed = 0;
    for (let i = 0; i < 20; i++) if ((await requests.tryAcquire(`late-${i}`, { pool: MODEL })).allowed) allowed++;
    const refilled = (10 * (performance.now() - resume)) / 1000;
    expect(allowed).toBeGreaterThanOrEqual(6);
    expect(allowed).toBeLessThanOrEqual(6 + refilled + 1e-9);
  });

  test("Azure's -1 headers (and a 429 without retry headers) change nothing", async () => {
    const fake = await server({
      rateLimitHeaders: 'minus-one',
      limits: { [MODEL]: { requests: 1000, windowMs: 1000 } },
    });
    const requests = pool({ rate: 1000, per: FROZEN });
    const llmTokens = pool({ rate: 100_000, per: FROZEN }, undefined, 'openai-llm-tokens');
    const errors: unknown[] = [];
    const client = throttleOpenAI(newClient(fake.baseURL), {
      shared: { requests, llmTokens },
      estimateLLMTokens: () => 100,
      onError: (e) => errors.push(e),
    });
    for (let i = 0; i < 5; i++) await withUser('alice', () => client.chat.completions.create(chat(MODEL, 'hi')));
    expect(fake.requests[0]?.headers).toBeDefined();
    expect(await left(requests, MODEL)).toBe(1000 - 5);
    expect(await left(llmTokens, MODEL)).toBe(100_000 - 5 * 50);
    // A 429 with nothing but -1s: the SDK's own backoff, no pause, and the pool's tokens stay right.
    fake.failNext(1, 429, { 'x-ratelimit-remaining-requests': '-1', 'x-ratelimit-limit-requests': '-1' });
    const t = performance.now();
    await withUser('alice', () => client.chat.completions.create(chat(MODEL, 'hi')));
    expect(performance.now() - t).toBeLessThan(3000);
    expect(await left(requests, MODEL)).toBe(1000 - 7);
    expect(errors).toEqual([]);
  });

  test('bad shared options fail at once, naming the option and the value', () => {
    const client = newClient('http://127.0.0.1:9/v1');
    const fails = (options: unknown, message: RegExp) => {
      let err: unknown;
      try {
        throttleOpenAI(newClient('http://127.0.0.1:9/v1'), options as never);
      } catch (e) {
        err = e;
      }
      expect(isInvalidOptionsError(err)).toBe(true);
      expect((err as Error).message).toMatch(message);
    };
    fails({ shared: { requests: 5 } }, /shared.requests must be a SharedLimiter \(received 5\)/);
    fails({ shared: 'pools' }, /shared must be an object like \{ requests, llmTokens \}/);
    fails({ shareKey: 'tenant' }, /shareKey must be a function/);
    expect(client).toBeDefined();
  });
});
