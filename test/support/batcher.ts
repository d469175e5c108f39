/**
 * Driving a ScriptBatcher directly, as RedisBackend does, for the batcher's own tests: one call
 * becomes a promise of its reply (allowed, remaining, wait ms, ms until full, server now µs).
 */
import { type BatchCall, type DecisionSpec, type ScriptBatcher, decisionArgs } from '@tollgate/core/internal';

export type Reply = [allowed: number, remaining: number, waitMs: number, resetMs: number, nowUs: number];

let seq = 0;

/** decide submits one decision to `batcher` and resolves with its reply, or rejects. */
export function decide(
  batcher: ScriptBatcher,
  key: string,
  spec: DecisionSpec,
  timeoutMs: number,
  serverDeadline: Buffer | '' = '',
): Promise<Reply> {
  return new Promise<Reply>((resolve, reject) => {
    let done = false;
    const call: BatchCall = {
      key,
      spec,
      serverDeadline,
      id: `testcall${(seq++).toString(36).padStart(8, '0')}`,
      expiresAt: 0,
      timeoutMs: 0,
      answer(reply, at) {
        if (done) return;
        done = true;
        resolve([
          reply.readDoubleLE(at),
          reply.readDoubleLE(at + 8),
          reply.readDoubleLE(at + 16),
          reply.readDoubleLE(at + 24),
          reply.readDoubleLE(reply.length - 8),
        ]);
      },
      fail(e) {
        done = true;
        reject(e);
      },
    };
    batcher.submit(call, timeoutMs);
  });
}

/** spec is a decision's spec (mode, rate, capacity, cost, max wait), as the scripts take it. */
export function spec(
  mode: 't' | 'r' | 'f',
  ratePerMs: number,
  capacity: number,
  cost: number,
  maxWaitMs = -1,
): DecisionSpec {
  return decisionArgs(mode, { ratePerMs, capacity }, cost, maxWaitMs);
}
