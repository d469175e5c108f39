/**
 * The examples and `pnpm demo` as a user runs them: child processes, offline (no OPENAI_API_KEY),
 * stdout not a TTY. Each must exit 0 on its own (no stray handles) and print numbers that show
 * the throttling happened: spacing per user, tools that did not run, tenants within their quota.
 */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parseDemoArgs } from '../../examples/multi-tenant/args.ts';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { type RedisServer, startRedis } from '../support/redis.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const EXAMPLES = resolve(ROOT, 'examples');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** run starts `command args` in `cwd` without a TTY and without OPENAI_API_KEY (offline). */
function run(
  command: string,
  args: string[],
  cwd: string,
  timeoutMs = 60_000,
  extraEnv: NodeJS.ProcessEnv = {},
): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, CI: 'true', NO_COLOR: '1' };
  delete env.OPENAI_API_KEY;
  delete env.OPENAI_BASE_URL;
  Object.assign(env, extraEnv);
  const start = performance.now();
  return new Promise((done, fail) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', fail);
    child.on('exit', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr, ms: performance.now() - start });
    });
  });
}

/** example runs an example's main.ts on the test runner's own Node (the Node 24 leg too). */
const example = (file: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) =>
  run(process.execPath, ['--import', 'tsx', '--conditions=tollgate-source', file, ...args], EXAMPLES, 60_000, env);

const explain = (r: Run) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

function numbers(line: string): number[] {
  return [...line.matchAll(/-?\d+(?:\.\d+)?/g)].map((m) => Number(m[0]));
}

function lineStarting(out: string, prefix: string): string {
  const line = out.split('\n').find((l) => l.startsWith(prefix));
  if (line === undefined) throw new Error(`no line starting with ${JSON.stringify(prefix)} in:\n${out}`);
  return line;
}

describe('openai-client example', () => {
  test("a user's burst is spaced to 3 requests/s, another user is not delayed, a stream and a retried 429 work", async () => {
    const r = await example('openai-client/main.ts');
    expect(r.code, explain(r)).toBe(0);
    const alice = numbers(lineStarting(r.stdout, 'alice:').split('answered at')[1] ?? '').slice(0, 6);
    expect(alice).toHaveLength(6);
    alice.sort((a, b) => a - b);
    const [first, , third, fourth, , sixth] = alice as [number, number, number, number, number, number];
    // Bursts of 3, then one every 333 ms: the 4th, 5th and 6th wait ~333, ~667, ~1000 ms after
    // the first request (times are from just before it, so these lower bounds are exact). The
    // first three came as a burst: spaced, the third would come 667 ms after the first. The
    // upper bounds leave room for a machine 3× slower than a quiet one.
    expect(third - first).toBeLessThan(600);
    expect(fourth).toBeGreaterThanOrEqual(330);
    expect(sixth).toBeGreaterThanOrEqual(995);
    expect(sixth).toBeLessThan(3500);
    // bob has a bucket of his own: answered with alice's first burst, not after her queue.
    const [bob] = numbers(lineStarting(r.stdout, 'bob:')) as [number];
    expect(bob).toBeLessThan(fourth);
    expect(lineStarting(r.stdout, 'stream:')).toMatch(/^stream: \d+ chunks, "Hello from the fake OpenAI server\."/);
    expect(numbers(lineStarting(r.stdout, 'retry:'))[0]).toBe(2);
  });
});

describe('agent-tools example', () => {
  test('tool calls run at 5/s after a burst of 2, and bad arguments never run the tool', async () => {
    const r = await example('agent-tools/main.ts');
    expect(r.code, explain(r)).toBe(0);
    expect(lineStarting(r.stdout, 'turn 1:')).toContain('6 tool calls');
    const weatherAt = r.stdout
      .split('\n')
      .filter((l) => l.includes('ran get_weather('))
      .map((l) => numbers(l.split(' at ')[1] ?? '')[0] as number)
      .sort((a, b) => a - b);
    expect(weatherAt).toHaveLength(5);
    // 2 at once, then 200 ms apart: the 5th runs at ~600 ms.
    expect(weatherAt[1]).toBeLessThan((weatherAt[0] as number) + 150);
    expect((weatherAt[4] as number) - (weatherAt[0] as number)).toBeGreaterThanOrEqual(550);
    expect((weatherAt[4] as number) - (weatherAt[0] as number)).toBeLessThan(3000);
    expect(r.stdout).toMatch(/ran search_docs\(packing list\)/);
    expect(lineStarting(r.stdout, 'answer:')).toContain('Done:');
    expect(lineStarting(r.stdout, 'bad arguments ->')).toMatch(/city/i);
    expect(lineStarting(r.stdout, 'malformed JSON ->')).toMatch(/json/i);
    expect(numbers(lineStarting(r.stdout, 'tools run for the two bad calls:'))[0]).toBe(0);
  });
});

interface TenantResult {
  tenant: string;
  tier: string;
  /** From the final table. */
  quotaPerS: number;
  burst: number;
  admitted: number;
  achievedPerS: number;
  afterBurstPerS: number;
  /** From the bound lines under it. */
  windowS: number;
  bound: number;
  within: boolean;
  avgWaitMs: number;
  maxWaitMs: number;
}

/** results parses the demo's final table and the bound line of each tenant under it. */
function results(out: string): TenantResult[] {
  const after = out.slice(out.indexOf('Done in'));
  const rows = new Map<string, string[]>();
  for (const line of after.split('\n')) {
    const cells = line
      .split('│')
      .map((c) => c.trim())
      .filter((c) => c !== '');
    if (cells.length === 7 && /^\d+ \(\d+\)$/.test(cells[2] ?? '')) rows.set(cells[0] as string, cells);
  }
  const boundLine =
    /^(\S+) \((\w+)\): (\d+) (?:≤|>) ([\d.]+) \+ ([\d.]+)\/s × ([\d.]+) s = ([\d.]+) (✓|✗ over quota)\s+wait avg (\d+), max (\d+) ms$/;
  const out2: TenantResult[] = [];
  for (const line of after.split('\n')) {
    const m = boundLine.exec(line);
    if (m === null) continue;
    const tenant = m[1] as string;
    const cells = rows.get(tenant);
    if (cells === undefined) throw new Error(`no table row for ${tenant} in:\n${after}`);
    const [quotaPerS, burst] = numbers(cells[2] as string) as [number, number];
    const [achievedPerS, afterBurstPerS] = numbers(cells[4] as string) as [number, number];
    out2.push({
      tenant,
      tier: m[2] as string,
      quotaPerS,
      burst,
      admitted: Number(cells[3]),
      achievedPerS,
      afterBurstPerS,
      windowS: Number(m[6]),
      bound: Number(m[7]),
      within: m[8] === '✓',
      avgWaitMs: Number(m[9]),
      maxWaitMs: Number(m[10]),
    });
    expect(Number(m[3])).toBe(Number(cells[3]));
    expect([Number(m[4]), Number(m[5])]).toEqual([burst, quotaPerS]);
  }
  return out2;
}

const QUOTAS: Record<string, { rate: number; burst: number }> = {
  free: { rate: 2, burst: 4 },
  pro: { rate: 6, burst: 12 },
  enterprise: { rate: 20, burst: 40 },
};

/** checkDemo asserts what the demo's output says about every tenant. */
function checkDemo(r: Run, seconds: number): TenantResult[] {
  expect(r.code, explain(r)).toBe(0);
  expect(r.stderr, explain(r)).toBe('');
  const rows = results(r.stdout);
  expect(rows.map((t) => `${t.tenant}:${t.tier}`).sort(), explain(r)).toEqual([
    'acme:enterprise',
    'globex:pro',
    'hooli:free',
    'initech:pro',
    'umbrella:free',
  ]);
  for (const t of rows) {
    const q = QUOTAS[t.tier] as { rate: number; burst: number };
    expect([t.quotaPerS, t.burst]).toEqual([q.rate, q.burst]);
    // Tenants kept starting tasks until `seconds`, then finished what was queued.
    expect(t.windowS, t.tenant).toBeGreaterThan(seconds * 0.9);
    expect(t.windowS, t.tenant).toBeLessThan(seconds + 8);
    // A token bucket admits at most burst + rate·T in T (T is printed to 0.01 s).
    expect(t.within, t.tenant).toBe(true);
    expect(t.admitted, t.tenant).toBeLessThanOrEqual(q.burst + q.rate * (t.windowS + 0.01));
    expect(t.bound).toBeCloseTo(q.burst + q.rate * t.windowS, 0);
    // Every tenant asks for more than its quota, so it gets most of it. How much it asks for
    // depends on the machine (each task waits for model calls and tools that run here too): on a
    // busy machine demand can fall below the quota, so the lower bound is wide; the upper bound
    // above is exact, and the ratios below hold however slow the machine is.
    expect(t.admitted, t.tenant).toBeGreaterThanOrEqual(q.burst + 0.4 * q.rate * t.windowS);
    expect(t.achievedPerS).toBeCloseTo(t.admitted / t.windowS, 1);
    // Beyond the first burst, the refill rate is what a tenant gets: its quota, not more.
    expect(t.afterBurstPerS, t.tenant).toBeLessThanOrEqual(q.rate * 1.01);
    expect(t.afterBurstPerS, t.tenant).toBeGreaterThanOrEqual(q.rate * 0.4);
  }
  const of = (tier: string) => rows.filter((t) => t.tier === tier);
  const most = (tier: string, f: (t: TenantResult) => number) => Math.max(...of(tier).map(f));
  const least = (tier: string, f: (t: TenantResult) => number) => Math.min(...of(tier).map(f));
  const avg = (t: TenantResult) => t.avgWaitMs;
  // Same demand, smaller quota: free waits longest, enterprise least.
  expect(least('free', avg)).toBeGreaterThan(most('pro', avg));
  expect(least('pro', avg)).toBeGreaterThan(most('enterprise', avg));
  expect(least('free', (t) => t.maxWaitMs)).toBeGreaterThan(most('enterprise', (t) => t.maxWaitMs));
  // And enterprise got the most done.
  expect(least('enterprise', (t) => t.admitted)).toBeGreaterThan(most('pro', (t) => t.admitted));
  expect(least('pro', (t) => t.admitted)).toBeGreaterThan(most('free', (t) => t.admitted));
  // The tiers' rates are 20, 6 and 2 per second: beyond the burst, enterprise gets at least 3×
  // what a free tenant gets (10× on a quiet machine; 1× would mean the tiers made no difference),
  // and every tenant of a tier gets within a factor 1.5 of its peer (nobody starved).
  const rate = (t: TenantResult) => t.afterBurstPerS;
  expect(least('enterprise', rate)).toBeGreaterThanOrEqual(3 * most('free', rate));
  expect(least('pro', rate)).toBeGreaterThanOrEqual(1.5 * most('free', rate));
  for (const tier of ['free', 'pro']) expect(most(tier, rate)).toBeLessThanOrEqual(1.5 * least(tier, rate));
  return rows;
}

describe('pnpm demo', () => {
  test('without a TTY: periodic plain lines, then each tenant within its quota, free waiting more than enterprise', async () => {
    const r = await run('pnpm', ['demo'], ROOT, 90_000);
    checkDemo(r, 8);
    // The live view degraded to plain lines: several reports per tenant while it ran.
    const live = r.stdout.split('\n').filter((l) => /^\[\s*\d+\.\d+s\] umbrella\s+free\s+queued/.test(l));
    expect(live.length, explain(r)).toBeGreaterThanOrEqual(3);
    expect(r.stdout).toContain('backend memory');
    expect(r.ms).toBeLessThan(60_000);
  }, 90_000);

  test('--help prints the usage and exits 0; a bad --backend exits 2 naming the option', async () => {
    const help = await example('multi-tenant/main.ts', ['--help']);
    expect(help.code, explain(help)).toBe(0);
    expect(help.stdout).toMatch(/^Usage: pnpm demo/);
    expect(help.stdout).toContain('--backend <kind>');
    const bad = await example('multi-tenant/main.ts', ['--backend', 'mongo']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--backend must be memory, redis or hybrid (received "mongo")');
  });

  describe('on Redis', () => {
    let redis: RedisServer;
    beforeAll(async () => {
      redis = await startRedis();
    });
    afterAll(async () => {
      await redis?.stop();
    });

    for (const backend of ['redis', 'hybrid']) {
      test(`--backend ${backend}: the same quotas hold with the buckets in Redis`, async () => {
        const r = await example('multi-tenant/main.ts', [
          '--backend',
          backend,
          '--redis-url',
          redis.url,
          '--seconds',
          '4',
        ]);
        checkDemo(r, 4);
        expect(r.stdout).toContain(`backend ${backend} at ${redis.url}`);
      }, 60_000);
    }

    test('an unreachable Redis fails with one clear line and exit 1', async () => {
      const r = await example('multi-tenant/main.ts', ['--backend', 'redis', '--redis-url', 'redis://127.0.0.1:1']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('cannot reach Redis at redis://127.0.0.1:1');
    });
  });
});

describe('with OPENAI_API_KEY set', () => {
  // The "real API" path, pointed through OPENAI_BASE_URL at a server this test runs (no network).
  let api: FakeOpenAI;
  beforeAll(async () => {
    api = await startFakeOpenAI();
  });
  afterAll(async () => {
    await api?.close();
  });
  const env = () => ({ OPENAI_API_KEY: 'sk-test-key', OPENAI_BASE_URL: api.baseURL, OPENAI_MODEL: 'gpt-test' });

  test('the examples start no server of their own and call the configured API with the key', async () => {
    for (const [file, args] of [
      ['openai-client/main.ts', []],
      ['agent-tools/main.ts', []],
      ['multi-tenant/main.ts', ['--seconds', '1']],
    ] as const) {
      api.requests.length = 0;
      const r = await example(file, [...args], env());
      expect(r.code, explain(r)).toBe(0);
      expect(r.stdout).toContain('the OpenAI API (OPENAI_API_KEY is set; model gpt-test)');
      expect(r.stdout).not.toContain('a fake OpenAI server on');
      expect(api.requests.length, file).toBeGreaterThan(0);
      for (const req of api.requests) {
        expect(req.headers.authorization).toBe('Bearer sk-test-key');
        expect(req.body?.model).toBe('gpt-test');
      }
    }
  }, 60_000);
});

describe('README "Uses"', () => {
  const readme = readFileSync(resolve(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('## Uses');
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));

  // Its TypeScript compiles as pasted: test/readme.test.ts type-checks every snippet.
  test('names an example folder that exists for every use', () => {
    expect(start).toBeGreaterThanOrEqual(0);
    const uses = section.split('\n### ').slice(1);
    expect(uses.length).toBeGreaterThanOrEqual(6);
    for (const use of uses) {
      for (const m of use.matchAll(/`examples\/([a-z-]+)`/g)) {
        expect(
          readdirSync(resolve(EXAMPLES, m[1] as string)).some((f) => f.endsWith('.ts')),
          m[1],
        ).toBe(true);
      }
    }
  });

  test('the commands it shows are scripts of examples/package.json', () => {
    const scripts = JSON.parse(readFileSync(resolve(EXAMPLES, 'package.json'), 'utf8')).scripts as Record<
      string,
      string
    >;
    const named = [...section.matchAll(/pnpm --filter @tollgate\/examples run ([a-z-]+)/g)].map((m) => m[1] as string);
    expect(named.length).toBeGreaterThanOrEqual(2);
    for (const name of named) expect(scripts[name], name).toBeDefined();
    expect(scripts.demo).toBe('tsx --conditions=tollgate-source multi-tenant/main.ts');
  });
});

describe('the demo command line', () => {
  test('defaults: memory, 8 s, live view on a TTY, plain lines elsewhere', () => {
    expect(parseDemoArgs([], {}, true)).toEqual({
      backend: 'memory',
      redisUrl: 'redis://127.0.0.1:6379',
      seconds: 8,
      plain: false,
      help: false,
    });
    expect(parseDemoArgs([], {}, false).plain).toBe(true);
    expect(parseDemoArgs([], { REDIS_URL: 'redis://127.0.0.2:6380' }, true).redisUrl).toBe('redis://127.0.0.2:6380');
  });

  test('options, and the `--` that `pnpm demo -- …` passes', () => {
    expect(
      parseDemoArgs(
        ['--', '--backend', 'hybrid', '--redis-url', 'redis://h:1', '--seconds', '2.5', '--plain'],
        {},
        true,
      ),
    ).toEqual({
      backend: 'hybrid',
      redisUrl: 'redis://h:1',
      seconds: 2.5,
      plain: true,
      help: false,
    });
    expect(parseDemoArgs(['-h'], {}, true).help).toBe(true);
  });

  test('a bad command line names the option and the value received', () => {
    expect(() => parseDemoArgs(['--seconds', '0'])).toThrow('--seconds must be a number from 1 to 30 (received "0")');
    expect(() => parseDemoArgs(['--redis-url', 'http://x'])).toThrow(
      '--redis-url must start with redis:// or rediss://',
    );
    expect(() => parseDemoArgs(['--backend'])).toThrow(/--backend/);
    expect(() => parseDemoArgs(['--tenants', '3'])).toThrow(/--tenants/);
    expect(() => parseDemoArgs(['extra'])).toThrow(/extra/);
  });
});
