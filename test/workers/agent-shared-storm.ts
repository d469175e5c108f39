/**
 * The storm scenario of the shared-pool tests: tenants, each with several concurrent loops of chat
 * calls, against the loopback OpenAI server enforcing `limit` requests/s for one model, through
 * the real openai client (SDK retries at their default, 2). With `tollgate`, the client is
 * throttled with a shared requests pool whose policy is 2× the provider's limit (a user who
 * guessed wrong); without, it is the bare client. Counts every HTTP attempt the server saw.
 *
 * Run alone, it prints both runs as JSON:
 *   node --import tsx --conditions=tollgate-source test/workers/agent-shared-storm.ts [ms]
 */
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { MemoryBackend, SharedLimiter } from '@tollgate/core';
import OpenAI from 'openai';
import { startFakeOpenAI } from '../../examples/support/fake-openai.ts';

export interface StormOptions {
  /** Throttle the client with shared pools (else: the bare client). */
  tollgate: boolean;
  /** The provider's limit, requests per second (bursts of as many). @default 10 */
  limit?: number;
  /** Tenants and their weights. @default { gold: 2, silver: 1, bronze: 1 } */
  tenants?: Record<string, number>;
  /** Concurrent loops per tenant. @default 4 */
  loops?: number;
  /** How long the loops start new calls, ms. @default 3000 */
  ms?: number;
  /** The first ms not counted in `steady` (the first responses). @default 500 */
  warmupMs?: number;
}

export interface StormResult {
  tollgate: boolean;
  /** Every HTTP attempt the server saw, 2xx and 429s. */
  attempts: number;
  ok: number;
  rateLimited: number;
  /** After the warm-up: attempts, 429s, and the 2xx per second (goodput). */
  steady: { attempts: number; rateLimited: number; okPerSecond: number };
  /** 2xx per tenant after the warm-up. */
  tenants: Record<string, number>;
  /** Calls that failed (the error the caller saw: its status, or its name). */
  callerErrors: Record<string, number>;
  calls: number;
}

const MODEL = 'gpt-4o-mini';

/** runStorm runs the scenario once and counts what the server and the callers saw. */
export async function runStorm(o: StormOptions): Promise<StormResult> {
  const limit = o.limit ?? 10;
  const tenants = o.tenants ?? { gold: 2, silver: 1, bronze: 1 };
  const loops = o.loops ?? 4;
  const ms = o.ms ?? 3000;
  const warmupMs = o.warmupMs ?? 500;
  const fake = await startFakeOpenAI({ limits: { [MODEL]: { requests: limit, windowMs: 1000 } } });
  try {
    const bare = new OpenAI({ baseURL: fake.baseURL, apiKey: 'test', timeout: 30_000 });
    const client = o.tollgate
      ? throttleOpenAI(bare, {
          shared: {
            requests: new SharedLimiter({
              backend: new MemoryBackend(),
              name: 'openai-requests',
              policy: { rate: 2 * limit, per: '1s' },
              weight: (tenant) => tenants[tenant] ?? 1,
            }),
          },
          shareKey: (user) => user.split('/')[0] as string,
        })
      : bare;
    const start = performance.now();
    const until = start + ms;
    const callerErrors: Record<string, number> = {};
    let calls = 0;
    const loop = async (user: string) => {
      while (performance.now() < until) {
        calls++;
        try {
          await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], user });
        } catch (e) {
          const name = String((e as { status?: unknown }).status ?? (e as Error).name);
          callerErrors[name] = (callerErrors[name] ?? 0) + 1;
        }
      }
    };
    await Promise.all(
      Object.keys(tenants).flatMap((t) =>
        Array.from({ length: loops }, (_, i) => withUser(`${t}/${i}`, () => loop(`${t}/${i}`))),
      ),
    );
    const all = fake.stats({ model: MODEL });
    const since = start + warmupMs;
    const steady = fake.attempts.filter((a) => a.model === MODEL && a.time >= since && a.time < until);
    const steadyOk = steady.filter((a) => a.status === 200);
    const perTenant: Record<string, number> = {};
    for (const a of steadyOk) {
      const t = (a.tenant ?? '').split('/')[0] as string;
      perTenant[t] = (perTenant[t] ?? 0) + 1;
    }
    return {
      tollgate: o.tollgate,
      attempts: all.attempts,
      ok: all.ok,
      rateLimited: all.rateLimited,
      steady: {
        attempts: steady.length,
        rateLimited: steady.filter((a) => a.status === 429).length,
        okPerSecond: steadyOk.length / ((ms - warmupMs) / 1000),
      },
      tenants: perTenant,
      callerErrors,
      calls,
    };
  } finally {
    await fake.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const ms = Number(process.argv[2] ?? 10_000);
  for (const tollgate of [false, true, false, true]) console.log(JSON.stringify(await runStorm({ tollgate, ms })));
}
