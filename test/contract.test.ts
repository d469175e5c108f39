import { HybridBackend, MemoryBackend, RedisBackend } from '@tollgate/core';
import { backendContract } from './support/contract.ts';
import { type RedisServer, startRedis } from './support/redis.ts';

let prefixes = 0;
const prefix = () => `t${process.pid}-${++prefixes}:`;

backendContract('memory', async () => ({
  make: () => new MemoryBackend({ clock: () => performance.now() }),
  fakeTime: true,
}));

let redis: RedisServer | undefined;
const shared = async () => {
  redis ??= await startRedis();
  return redis;
};

backendContract('redis', async () => {
  const srv = await shared();
  const client = srv.client();
  return { make: () => new RedisBackend({ client, prefix: prefix() }) };
});

backendContract('hybrid', async () => {
  const srv = await shared();
  const client = srv.client();
  return {
    make: () => new HybridBackend({ client, prefix: prefix() }),
    close: () => redis?.stop(),
  };
});
