// The Redis backend lives in ./redis/; this path stays for the imports that name it.
export { DEFAULT_REDIS_OPTIONS, RedisBackend, parseRedisOptions } from './redis/backend.js';
export type { RedisBackendOptions } from './redis/backend.js';
export { encodeKey, redisKey } from './redis/keys.js';
