/**
 * A child process of the bench (see probes.ts):
 *   worker.ts memory <keys>                 heap held per idle key of a MemoryBackend
 *   worker.ts flight <lib> <port> <ms>      tryAcquire, 256 in flight on 1,000 keys, for <ms>
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { MemoryBackend, RateLimiter, RedisBackend } from '@tollgate/core';
import { Redis } from 'ioredis';
import { RateLimiterRedis } from 'rate-limiter-flexible';

const send = (m: unknown): void => {
  process.send?.(m);
};

function heap(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  for (let i = 0; i < 4; i++) gc();
  return process.memoryUsage().heapUsed;
}

async function memory(n: number): Promise<void> {
  const base0 = heap();
  let keys: string[] | undefined = Array.from({ length: n }, (_, i) => `user-${i}`);
  const base1 = heap();
  const limiter = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 10, per: '1h' } });
  for (const k of keys) await limiter.tryAcquire(k);
  keys = undefined;
  const after = heap();
  const stored = (limiter.backend as MemoryBackend).size;
  if (stored !== n) throw new Error(`expected ${n} buckets held, found ${stored}`);
  const arrayBytes = 8 * n;
  send({
    result: {
      keys: n,
      bytesPerKey: (after - base0) / n,
      bytesPerKeyWithoutKeyStrings: (after - (base1 - arrayBytes)) / n,
    },
  });
}

async function flight(lib: string, port: number, ms: number): Promise<void> {
  // The parent's main thread is pinned to CPU 0 and a fork inherits it: let the OS place us.
  try {
    execFileSync('taskset', ['-a', '-pc', `0-${os.cpus().length - 1}`, String(process.pid)], { stdio: 'ignore' });
  } catch {
    // no taskset: not pinned in the first place
  }
  const client = new Redis(port, '127.0.0.1');
  const keys = Array.from({ length: 1000 }, (_, i) => `user-${i}`);
  const policy = { rate: 1000, per: '1h', capacity: 1e9 } as const;
  let op: (k: string) => Promise<unknown>;
  if (lib === 'tollgate') {
    const limiter = new RateLimiter({ backend: new RedisBackend({ client, prefix: 'procs:' }), policy });
    op = (k) => limiter.tryAcquire(k);
  } else {
    const rlf = new RateLimiterRedis({ storeClient: client, points: 1e9, duration: 3600, keyPrefix: 'procsrlf' });
    op = (k) => rlf.consume(k);
  }
  await client.ping();
  for (let i = 0; i < 2000; i++) await op(keys[i % 1000] as string);
  await new Promise<void>((resolve) => {
    process.once('message', () => resolve());
    send({ ready: true });
  });
  let count = 0;
  let stop = false;
  const until = performance.now() + ms;
  const worker = async (w: number): Promise<void> => {
    let i = w;
    while (!stop) {
      await op(keys[i++ % 1000] as string);
      count++;
      if ((count & 255) === 0 && performance.now() >= until) stop = true;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: 256 }, (_, w) => worker(w * 4)));
  const elapsed = performance.now() - t0;
  client.disconnect();
  send({ result: (count * 1000) / elapsed });
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'memory') await memory(Number(args[0]));
else if (mode === 'flight') await flight(args[0] as string, Number(args[1]), Number(args[2]));
else throw new Error(`unknown worker mode ${mode}`);
