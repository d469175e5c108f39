// The script batcher lives in ./redis/batcher.ts; this path stays for the imports that name it.
export { MAX_BATCH, MAX_IN_FLIGHT, ScriptBatcher, isNoScript } from './redis/batcher.js';
export type { BatchCall, DecisionSpec } from './redis/batcher.js';
export { keySlot } from './redis/keys.js';
