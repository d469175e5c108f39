/**
 * The storage strategy the demo's limiters share, from --backend and --redis-url.
 */
import { type Backend, HybridBackend, MemoryBackend, RedisBackend } from '@tollgate/core';
import { Redis } from 'ioredis';
import type { DemoArgs } from './args.ts';

/** SetupError is a problem the user fixes (Redis not running): shown as one line, no stack. */
export class SetupError extends Error {
  override name = 'SetupError';
}

export interface DemoBackend {
  readonly backend: Backend;
  /** For the title line: 'memory', or 'redis at redis://…'. */
  readonly label: string;
  close(): Promise<void>;
}

/** openBackend connects to Redis when asked to, failing with one clear line if it can't. */
export async function openBackend(args: DemoArgs): Promise<DemoBackend> {
  if (args.backend === 'memory') {
    return { backend: new MemoryBackend(), label: 'memory', close: async () => {} };
  }
  const client = new Redis(args.redisUrl, {
    lazyConnect: true,
    connectTimeout: 2000,
    maxRetriesPerRequest: 1,
    // Give up at once when Redis is not there: the demo is interactive.
    retryStrategy: () => null,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.ping();
  } catch (e) {
    client.disconnect();
    throw new SetupError(
      `cannot reach Redis at ${args.redisUrl} (${e instanceof Error ? e.message : String(e)}): start redis-server, pass --redis-url, or use --backend memory`,
    );
  }
  // A fresh prefix per run: buckets of an earlier run (they expire on their own) start nobody in debt.
  const prefix = `tollgate-demo:${process.pid}-${Date.now()}:`;
  const backend =
    args.backend === 'redis' ? new RedisBackend({ client, prefix }) : new HybridBackend({ client, prefix });
  return {
    backend,
    label: `${args.backend} at ${args.redisUrl}`,
    close: async () => {
      await client.quit().catch(() => client.disconnect());
    },
  };
}
