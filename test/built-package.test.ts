/**
 * What an outside user gets: `pnpm build` output imported by plain node (no TypeScript, no
 * source condition), driving all three backends against a redis-server of its own.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type RedisServer, startRedis } from './support/redis.ts';
import { ROOT } from './support/spawn.ts';

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
  execFileSync(
    process.execPath,
    [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'packages/core/tsconfig.build.json'],
    {
      cwd: ROOT,
      stdio: 'pipe',
    },
  );
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

test('the built @tollgate/agent loads in plain node and throttles a real openai client per user', async () => {
  execFileSync(
    process.execPath,
    [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'packages/agent/tsconfig.build.json'],
    {
      cwd: ROOT,
      stdio: 'pipe',
    },
  );
  const { startFakeOpenAI } = await import('../examples/support/fake-openai.ts');
  const fake = await startFakeOpenAI();
  const dir = mkdtempSync(join(ROOT, 'test', '.tmp-outside-'));
  const script = join(dir, 'outside-agent.mjs');
  writeFileSync(
    script,
    `
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(join(ROOT, 'test', 'package.json'))});
const { MemoryBackend, RateLimiter } = await import(require.resolve('@tollgate/core'));
const { throttleOpenAI, withUser } = await import(require.resolve('@tollgate/agent'));
const { default: OpenAI } = await import(require.resolve('openai'));
const requests = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 10, per: '1s', capacity: 1 }, name: 'requests' });
const client = throttleOpenAI(new OpenAI({ baseURL: ${JSON.stringify(fake.baseURL)}, apiKey: 'test', maxRetries: 0 }), { requests });
const t0 = Date.now();
const at = [];
await withUser('u1', () => Promise.all([0, 1, 2].map(() =>
  client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }).then(() => at.push(Date.now() - t0)))));
console.log(JSON.stringify({ resolved: require.resolve('@tollgate/agent'), at }));
`,
  );
  let stdout: string;
  try {
    // Asynchronously: the fake server answers from this process's event loop.
    ({ stdout } = await promisify(execFile)(process.execPath, [script], {
      cwd: dir,
      encoding: 'utf8',
      timeout: 30_000,
    }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await fake.close();
  }
  const { resolved, at } = JSON.parse(stdout.trim().split('\n').pop() as string) as { resolved: string; at: number[] };
  expect(resolved).toMatch(/packages\/agent\/dist\/index\.js$/);
  // capacity 1 at 10 per second: the three calls of one user come 100 ms apart.
  expect(at).toHaveLength(3);
  expect(at[2] as number).toBeGreaterThanOrEqual(190);
  expect(at[2] as number).toBeLessThan(1000);
}, 60_000);
