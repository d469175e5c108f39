/**
 * The ioredis classes the Redis tests run against: ioredis 5 by default, ioredis 6 when
 * TOLLGATE_IOREDIS=6 (a leg of .ci/run). Both are the real clients.
 */
import * as IORedis5 from 'ioredis';
import * as IORedis6 from 'ioredis6';

const MODULES = { 5: IORedis5, 6: IORedis6 } as const;
const asked = process.env.TOLLGATE_IOREDIS ?? '5';
if (!Object.hasOwn(MODULES, asked)) {
  throw new Error(`TOLLGATE_IOREDIS=${asked}: the Redis tests run with ioredis 5 or 6 (unset means 5)`);
}
export const IOREDIS_MAJOR = Number(asked) as keyof typeof MODULES;

/** Redis and Cluster of the major under test, typed as ioredis 5's (their public surfaces match). */
export const Redis = MODULES[IOREDIS_MAJOR].Redis as unknown as typeof IORedis5.Redis;
export type Redis = IORedis5.Redis;
export const Cluster = MODULES[IOREDIS_MAJOR].Cluster as unknown as typeof IORedis5.Cluster;
export type Cluster = IORedis5.Cluster;
