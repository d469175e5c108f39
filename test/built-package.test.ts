/**
 * What an outside user gets: `pnpm build` output imported by plain node (no TypeScript, no
 * source condition), driving all three backends against a redis-server of its own.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type RedisServer, startRedis } from './support/redis.ts';
import { ROOT } from './support/spawn.ts';

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
  execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'packages/core/tsconfig.build.json'], {
    cwd: ROOT,
    stdio: 'pipe',
  });
}, 120_000);
afterAll(() => srv.stop());

test('the built @tollgate/core loads in plain node and drives memory, Redis and hybrid by the DESIGN names', () => {
  const dir = mkdtempSync(join(ROOT, 'test', '.tmp-outside-'));
  const script = join(dir, 'outside.mjs');
  writeFileSync(
    script,
    `
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(join(ROOT, 'test', 'package.json'))});
const core = await import(require.resolve('@tollgate/core'));
const { Redis } = await import(require.resolve('ioredis'));
const { MemoryBackend, RedisBackend, HybridBackend, RateLimiter, MaxWaitExceededError } = core;
const client = new Redis(${srv.port}, '127.0.0.1');
const out = {};
for (const backend of [new MemoryBackend(), new RedisBackend({ client, prefix: 'outside:' }), new HybridBackend({ client, prefix: 'outside-h:', headroom: 1.2 })]) {
  const limiter = new RateLimiter({ backend, policy: { rate: 10, per: '1s', capacity: 3 }, name: 'requests', onBackendError: 'fail-closed' });
  const allowed = [];
  for (let i = 0; i < 5; i++) allowed.push((await limiter.tryAcquire('u')).allowed);
  const t0 = Date.now();
  const g = await limiter.acquire('u', { cost: 1 });
  const waited = Date.now() - t0;
  let maxWait = '';
  try { await limiter.acquire('u', { maxWaitMs: 1 }); } catch (e) { maxWait = e instanceof MaxWaitExceededError ? e.code : String(e); }
  await limiter.refund('u', 1);
  out[backend.kind] = { allowed, waited, grant: typeof g.waitedMs, maxWait };
}
console.log(JSON.stringify({ resolved: require.resolve('@tollgate/core'), out }));
client.disconnect();
`,
  );
  let stdout: string;
  try {
    stdout = execFileSync(process.execPath, [script], { cwd: dir, encoding: 'utf8' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const { resolved, out } = JSON.parse(stdout.trim().split('\n').pop() as string);
  expect(resolved).toMatch(/packages\/core\/dist\/index\.js$/);
  for (const kind of ['memory', 'redis', 'hybrid']) {
    expect(out[kind].allowed).toEqual([true, true, true, false, false]);
    expect(out[kind].waited).toBeGreaterThanOrEqual(50);
    expect(out[kind].waited).toBeLessThan(250);
    expect(out[kind].maxWait).toBe('ERR_TOLLGATE_MAX_WAIT_EXCEEDED');
  }
}, 30_000);
