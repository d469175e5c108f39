// The Redis scripts live in ./redis/scripts.ts; this path stays for the imports that name it.
export { BATCH_SCRIPT, BATCH_SHA, BUCKET_SCRIPT, BUCKET_SHA, DECIDE_LUA, decodeBucket } from './redis/scripts.js';
