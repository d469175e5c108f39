/**
 * One process of the provider-storm scenario (provider.ts), forked with IPC. It holds a shared
 * requests pool on Redis (SharedLimiter on a RedisBackend, its policy 2× the provider's limit,
 * tenants weighted) and answers the parent's messages:
 *
 *   → { phase: 'bare' | 'tollgate', baseURL, prefix, startAt, stopAt }   (epoch ms)
 *   ← { done: { calls, errors } }
 *
 * Each phase runs `loops` concurrent loops per tenant, from `startAt`, each starting chat calls
 * until `stopAt`, through a new openai client (SDK retries at their default): bare, or wrapped by
 * throttleOpenAI with the shared pool. The user of a call is `<tenant>/p<proc>-<loop>`, so the
 * server's attempt log says which tenant and which process sent it.
 * argv: JSON { redisPort, model, limit, tenants: { name: weight }, loops, proc }
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { RedisBackend, SharedLimiter } from '@tollgate/core';
import { Redis } from 'ioredis';
import OpenAI from 'openai';

export interface WorkerConfig {
  redisPort: number;
  model: string;
  /** The provider's limit, requests per second; the pool's policy is twice it. */
  limit: number;
  tenants: Record<string, number>;
  /** Concurrent loops per tenant in this process. */
  loops: number;
  /** This process's index, written into each call's user. */
  proc: number;
}

export interface PhaseMessage {
  phase: 'bare' | 'tollgate';
  baseURL: string;
  /** Redis key prefix of this phase's pools. */
  prefix: string;
  startAt: number;
  stopAt: number;
}

export interface PhaseDone {
  /** Calls the loops started. */
  calls: number;
  /** Calls that failed, by what the caller saw (the HTTP status, else the error's name). */
  errors: Record<string, number>;
}

// The parent's main thread is pinned to CPU 0 and a fork inherits it: let the OS place us.
try {
  execFileSync('taskset', ['-a', '-pc', `0-${os.cpus().length - 1}`, String(process.pid)], { stdio: 'ignore' });
} catch {
  // no taskset: not pinned in the first place
}

const cfg = JSON.parse(process.argv[2] as string) as WorkerConfig;
const redis = new Redis(cfg.redisPort, '127.0.0.1');
await redis.ping();

async function phase(m: PhaseMessage): Promise<PhaseDone> {
  const bare = new OpenAI({ baseURL: m.baseURL, apiKey: 'bench' });
  let client = bare;
  if (m.phase === 'tollgate') {
    const requests = new SharedLimiter({
      backend: new RedisBackend({ client: redis, prefix: m.prefix }),
      name: 'openai-requests',
      policy: { rate: 2 * cfg.limit, per: '1s' },
      weight: (tenant) => cfg.tenants[tenant] ?? 1,
    });
    // Load the pool script before the clock starts, as a long-running service would have.
    await requests.tryAcquire('warm', { pool: 'warm' });
    client = throttleOpenAI(bare, { shared: { requests }, shareKey: (user) => user.split('/')[0] as string });
  }
  await new Promise((r) => setTimeout(r, Math.max(0, m.startAt - Date.now())));
  let calls = 0;
  const errors: Record<string, number> = {};
  await Promise.all(
    Object.keys(cfg.tenants).flatMap((tenant) =>
      Array.from({ length: cfg.loops }, (_, i) => {
        const user = `${tenant}/p${cfg.proc}-${i}`;
        return withUser(user, async () => {
          while (Date.now() < m.stopAt) {
            calls++;
            try {
              await client.chat.completions.create({
                model: cfg.model,
                messages: [{ role: 'user', content: 'hi' }],
                user,
              });
            } catch (e) {
              const what = String((e as { status?: unknown }).status ?? (e as Error).name);
              errors[what] = (errors[what] ?? 0) + 1;
            }
          }
        });
      }),
    ),
  );
  return { calls, errors };
}

process.on('message', (m: PhaseMessage | 'exit') => {
  if (m === 'exit') {
    redis.disconnect();
    process.disconnect();
    return;
  }
  phase(m).then(
    (done) => process.send?.({ done }),
    (e: unknown) => process.send?.({ failed: String((e as Error).stack ?? e) }),
  );
});
process.send?.({ ready: true });
