/**
 * One process of the multi-process shared-pool test: throttleOpenAI with `shared` pools in Redis
 * (a RedisBackend SharedLimiter, its policy 2× the provider's limit), `loops` concurrent loops per
 * tenant calling the loopback OpenAI server from `startAt` to `stopAt` (epoch ms). Prints, as
 * JSON, the calls made, the errors callers saw, and when this process heard each retry time.
 * argv: JSON { redisPort, prefix, baseURL, model, limit, tenants, loops, startAt, stopAt }
 */
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { type PoolObservation, RedisBackend, SharedLimiter } from '@tollgate/core';
import { Redis } from 'ioredis';
import OpenAI from 'openai';

const cfg = JSON.parse(process.argv[2] as string) as {
  redisPort: number;
  prefix: string;
  baseURL: string;
  model: string;
  limit: number;
  tenants: string[];
  loops: number;
  startAt: number;
  stopAt: number;
};

/** Records (epoch ms) when this process was told to pause a pool. */
class Heard extends SharedLimiter {
  readonly heardAt: number[] = [];
  override observe(pool: string, said: PoolObservation): Promise<void> {
    if ((said.retryAfterMs ?? 0) > 0) this.heardAt.push(Date.now());
    return super.observe(pool, said);
  }
}

const redis = new Redis(cfg.redisPort, '127.0.0.1');
const requests = new Heard({
  backend: new RedisBackend({ client: redis, prefix: cfg.prefix }),
  name: 'openai-requests',
  policy: { rate: 2 * cfg.limit, per: '1s' },
});
const client = throttleOpenAI(new OpenAI({ baseURL: cfg.baseURL, apiKey: 'test', timeout: 30_000 }), {
  shared: { requests },
  shareKey: (user) => user.split('/')[0] as string,
});
await requests.tryAcquire('warm', { pool: 'warm' });
await new Promise((r) => setTimeout(r, Math.max(0, cfg.startAt - Date.now())));
let calls = 0;
const errors: string[] = [];
await Promise.all(
  cfg.tenants.flatMap((tenant) =>
    Array.from({ length: cfg.loops }, async (_, i) => {
      const user = `${tenant}/${i}`;
      while (Date.now() < cfg.stopAt) {
        calls++;
        try {
          await withUser(user, () =>
            client.chat.completions.create({ model: cfg.model, messages: [{ role: 'user', content: 'hi' }], user }),
          );
        } catch (e) {
          errors.push(String((e as Error).message));
        }
      }
    }),
  ),
);
console.log(JSON.stringify({ calls, errors, heardAt: requests.heardAt }));
redis.disconnect();
