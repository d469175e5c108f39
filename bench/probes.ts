/**
 * Measurements that are not ops/s races: memory held per idle key, Redis calls per hybrid burst,
 * and how throughput grows with processes sharing one Redis. The first and last run in child
 * processes (a clean heap; real parallelism).
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { HybridBackend, RateLimiter } from '@tollgate/core';
import type { Redis } from 'ioredis';

const here = (f: string): string => fileURLToPath(new URL(f, import.meta.url));

/** Runs `worker.ts` with `args` in a child Node process (same loader and conditions as this one). */
function child<T>(
  args: string[],
  extraExecArgv: string[] = [],
  onReady?: (send: (m: unknown) => void) => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const cp = fork(here('./worker.ts'), args, {
      execArgv: [...process.execArgv, ...extraExecArgv],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    cp.on('message', (m: { ready?: boolean; result?: T }) => {
      if (m.ready) onReady?.((msg) => cp.send(msg as never));
      else if (m.result !== undefined) {
        resolve(m.result);
        cp.disconnect();
      }
    });
    cp.on('error', reject);
    cp.on('exit', (code) => {
      if (code !== 0) reject(new Error(`bench worker ${args.join(' ')} exited with ${code}`));
    });
  });
}

export interface MemoryPerKey {
  keys: number;
  /** Heap bytes per key held, key strings included. */
  bytesPerKey: number;
  /** The same, key strings excluded (they were made before the baseline). */
  bytesPerKeyWithoutKeyStrings: number;
}

export function memoryPerKey(keys: number): Promise<MemoryPerKey> {
  return child<MemoryPerKey>(['memory', String(keys)], ['--expose-gc']);
}

export interface BurstResult {
  calls: number;
  capacity: number;
  admitted: number;
  /** Script calls Redis ran for the burst (EVALSHA and EVAL, from INFO commandstats). */
  redisCalls: number;
  /** The bound of issue 5: 1.5 · capacity + 20. */
  bound: number;
}

async function scriptCalls(admin: Redis): Promise<number> {
  const info = await admin.info('commandstats');
  let n = 0;
  for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) n += Number(m[1]);
  return n;
}

/** A burst of `calls` concurrent tryAcquire on one fresh key of a hybrid limiter. */
export async function hybridBurst(client: Redis, admin: Redis, calls: number, capacity: number): Promise<BurstResult> {
  const limiter = new RateLimiter({
    backend: new HybridBackend({ client, prefix: `burst${Date.now()}:` }),
    policy: { rate: capacity, per: '1m', capacity },
  });
  await client.ping();
  const before = await scriptCalls(admin);
  const ds = await Promise.all(Array.from({ length: calls }, () => limiter.tryAcquire('burst')));
  const after = await scriptCalls(admin);
  return {
    calls,
    capacity,
    admitted: ds.filter((d) => d.allowed).length,
    redisCalls: after - before,
    bound: 1.5 * capacity + 20,
  };
}

export interface ProcessScaling {
  processes: number;
  /** Sum over processes of Tollgate tryAcquire/s, 256 in flight each, 1,000 keys. */
  tollgate: number;
  /** The same with rate-limiter-flexible. */
  rlf: number;
}

/** N processes on one Redis, all started together, each `ms` long per library. */
export async function processScaling(port: number, counts: number[], ms: number): Promise<ProcessScaling[]> {
  const out: ProcessScaling[] = [];
  for (const n of counts) {
    const row: ProcessScaling = { processes: n, tollgate: 0, rlf: 0 };
    for (const lib of ['tollgate', 'rlf'] as const) {
      const ready: Array<(m: unknown) => void> = [];
      let started = false;
      const results = Array.from({ length: n }, () =>
        child<number>(['flight', lib, String(port), String(ms)], [], (send) => {
          ready.push(send);
          if (ready.length === n && !started) {
            started = true;
            for (const s of ready) s('go');
          }
        }),
      );
      const ops = await Promise.all(results);
      row[lib] = ops.reduce((a, b) => a + b, 0);
    }
    out.push(row);
  }
  return out;
}
