import { afterAll } from 'vitest';
import { HybridBackend, RedisBackend } from '@tollgate/core';
import { backendContract } from './support/contract.ts';
import { type RedisCluster, startCluster } from './support/redis.ts';

let prefixes = 0;
const prefix = () => `c${process.pid}-${++prefixes}:`;

let cluster: RedisCluster | undefined;
const shared = async () => {
  cluster ??= await startCluster({ masters: 3 });
  return cluster;
};
afterAll(async () => {
  await cluster?.stop();
});

for (const enableAutoPipelining of [false, true]) {
  const how = enableAutoPipelining ? 'auto-pipelining' : 'no pipelining';
  backendContract(`redis on a 3-master cluster (${how})`, async () => {
    const c = (await shared()).client({ enableAutoPipelining });
    await c.ping(); // connected, slots known: the first decision pays no connection setup
    return { make: () => new RedisBackend({ client: c, prefix: prefix() }) };
  });
  backendContract(`hybrid on a 3-master cluster (${how})`, async () => {
    const c = (await shared()).client({ enableAutoPipelining });
    await c.ping();
    return { make: () => new HybridBackend({ client: c, prefix: prefix() }) };
  });
}
