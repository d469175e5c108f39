/**
 * pnpm bench [--full] [--json] [--save file.json] [--only id,id] [--rounds n]
 *
 * One run measures Tollgate, its peers and the ceilings on the same scenarios, against its own
 * redis-server on a free loopback port, and prints the ratios Tollgate ÷ each from this run.
 * Quick by default (under a minute); --full runs 10,000 calls per round of the seed table, more
 * rounds, memory per key at 1M keys, scaling with keys and with 1, 2, 4 processes, and the provider
 * storm (provider.ts: bare clients against Tollgate on a rate-limiting provider; also --only
 * provider-storm).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import Table from 'cli-table3';
import { startRedis } from '../test/support/redis.js';
import { type ScenarioResult, runScenario } from './harness.js';
import {
  type BurstResult,
  type MemoryPerKey,
  type ProcessScaling,
  hybridBurst,
  memoryPerKey,
  processScaling,
} from './probes.js';
import { type Sizes, TARGETS, scenarios } from './scenarios.js';
import { metricsScenarios } from './metrics.js';
import { openaiScenario } from './openai.js';
import { scalingScenarios } from './scaling.js';
import { SHARED_TARGETS, type SharedProbe, sharedProbe, sharedScenarios } from './shared.js';
import { type CpuRow, redisCpu } from './redis-cpu.js';
import { type ProviderStorm, printProviderStorm, providerStorm, providerTargets } from './provider.js';

const { values: args } = parseArgs({
  options: {
    full: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    save: { type: 'string' },
    only: { type: 'string' },
    rounds: { type: 'string' },
  },
  strict: true,
});

const full = args.full === true;
const rounds = args.rounds !== undefined ? Number(args.rounds) : full ? 7 : 5;
if (!Number.isInteger(rounds) || rounds < 1)
  throw new Error(`--rounds must be an integer >= 1 (received ${args.rounds})`);
const only = args.only?.split(',').map((s) => s.trim());
const log = (s: string): void => {
  if (!args.json) process.stderr.write(`${s}\n`);
};

const sizes: Sizes = full
  ? { memOps: 1_000_000, redisOps: 5_000, flightOps: 100_000, seedMemOps: 10_000, seedRedisOps: 10_000 }
  : { memOps: 200_000, redisOps: 1_500, flightOps: 25_000, seedMemOps: 10_000, seedRedisOps: 1_500 };

const redis = await startRedis();
const clients: Array<{ disconnect(): void }> = [];
const ctx = {
  port: redis.port,
  client: () => {
    const c = redis.client();
    clients.push(c);
    return c;
  },
};

const started = performance.now();
try {
  const admin = ctx.client();
  const serverInfo = await admin.info('server');
  const redisVersion = /redis_version:(\S+)/.exec(serverInfo)?.[1] ?? '?';
  const pinned = pin(Number(/process_id:(\d+)/.exec(serverInfo)?.[1]));
  const machine = {
    nproc: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? '?',
    node: process.version,
    redis: redisVersion,
    command: `pnpm bench${full ? ' --full' : ''}`,
    rounds,
    warmup: 1,
    pinned,
  };
  log(
    `${machine.command}: ${machine.nproc} × ${machine.cpu}, Node ${machine.node}, Redis ${machine.redis}; median of ${rounds} rounds; ${pinned}`,
  );

  const openai = await openaiScenario(full ? 600 : 300);
  const all = [
    ...(await scenarios(ctx, sizes)),
    openai.scenario,
    ...sharedScenarios(ctx, sizes),
    ...metricsScenarios(sizes),
    ...(full ? await scalingScenarios(ctx) : []),
  ];
  const results: ScenarioResult[] = [];
  for (const s of all) {
    if (only !== undefined && !only.includes(s.id)) continue;
    log(`  ${s.title} …`);
    results.push(await runScenario(s, { rounds, warmup: 1 }));
  }

  await openai.close();

  let cpu: CpuRow[] | undefined;
  if (only === undefined || only.includes('redis-cpu')) {
    log('  Redis CPU per decision …');
    cpu = await redisCpu(ctx, admin, full ? 20_000 : 10_000, rounds);
  }

  let perKey: MemoryPerKey | undefined;
  let burst: BurstResult | undefined;
  let procs: ProcessScaling[] | undefined;
  if (only === undefined || only.includes('memory-per-key')) {
    log('  memory per idle key …');
    perKey = await memoryPerKey(full ? 1_000_000 : 1_000_000);
  }
  if (only === undefined || only.includes('hybrid-burst')) {
    log('  hybrid burst …');
    burst = await hybridBurst(ctx.client(), admin, 10_000, 100);
  }
  if (full || only?.includes('processes')) {
    log('  1, 2, 4 processes on one Redis …');
    procs = await processScaling(redis.port, [1, 2, 4], full ? 3000 : 1500);
  }

  let shared: SharedProbe | undefined;
  if (only === undefined || only.includes('shared-probe')) {
    log('  SharedLimiter round trips and Redis CPU …');
    shared = await sharedProbe(ctx, admin, full ? 3000 : 1500);
  }

  let storm: ProviderStorm | undefined;
  // About 30 s (two phases of 14 s): with --full or --only only.
  if (full || only?.includes('provider-storm')) {
    log('  provider storm: bare clients, then Tollgate, against a provider enforcing 10 requests/s …');
    storm = await providerStorm(redis.port);
  }

  const targets = [...TARGETS, ...SHARED_TARGETS].map((t) => {
    const r = results.find((x) => x.id === t.scenario);
    const tg = r?.results.find((x) => x.role === 'tollgate');
    const other = r?.results.find((x) => x.name === t.against);
    const ratio = tg && other ? tg.opsPerSec / other.opsPerSec : undefined;
    return { ...t, ratio, holds: ratio === undefined ? undefined : ratio >= t.min };
  });
  const cpuOf = (prefix: string) => cpu?.find((c) => c.name.startsWith(prefix))?.usPerDecision;
  const rlfCpu = cpuOf('rate-limiter-flexible (sequential)');
  const extraTargets = [
    ...(['Tollgate, single', 'Tollgate, batch'] as const).map((prefix) => {
      const v = cpuOf(prefix);
      return v === undefined || rlfCpu === undefined
        ? undefined
        : {
            text: `Redis CPU µs per decision, ${prefix.slice(10)} script: <= rlf's (${rlfCpu.toFixed(1)})`,
            value: v,
            holds: v <= rlfCpu,
          };
    }),
    perKey && {
      text: 'memory per idle key at 1M keys: <= 200 bytes (key strings included)',
      value: perKey.bytesPerKey,
      holds: perKey.bytesPerKey <= 200,
    },
    burst && {
      text: 'hybrid burst: Redis calls <= 1.5·capacity + 20',
      value: burst.redisCalls,
      holds: burst.redisCalls <= burst.bound,
    },
    ...(storm ? providerTargets(storm) : []),
  ].filter((x) => x !== undefined);

  const seconds = (performance.now() - started) / 1000;
  const json = `${JSON.stringify({ machine, sizes, seconds, results, targets, extraTargets, cpu, perKey, burst, procs, shared, providerStorm: storm }, null, 2)}\n`;
  // --save keeps the figures of the run whose table is printed.
  if (args.save !== undefined) writeFileSync(args.save, json);
  if (args.json) {
    process.stdout.write(json);
  } else {
    print(results, targets, extraTargets, perKey, burst, procs, cpu);
    if (shared) console.log(`\nSharedLimiter on Redis: ${JSON.stringify(shared)}`);
    if (storm) printProviderStorm(storm);
    console.log(
      `\n${machine.command} — ${machine.nproc} × ${machine.cpu}, Node ${machine.node}, Redis ${machine.redis}`,
    );
    console.log(`median of ${rounds} rounds after 1 warm-up round; ${pinned}; took ${seconds.toFixed(1)} s`);
  }
} finally {
  for (const c of clients) c.disconnect();
  await redis.stop();
}
// Peers keep timers (bottleneck's heartbeat, rlf's block list): the bench is done.
process.exit(0);

/**
 * pin puts redis-server on the last CPU and this process's main thread on the first. Left to the
 * scheduler, the two sometimes share a core (a loopback round trip then costs ~10 µs) and
 * sometimes not (~75 µs on this VM, waking the other vCPU), and the Redis figures jump 4× between
 * rounds. Pinned apart they are steady, and closer to a Redis on its own machine.
 */
function pin(redisPid: number): string {
  const cpus = os.cpus().length;
  if (cpus < 2 || !Number.isInteger(redisPid)) return 'not pinned (one CPU)';
  try {
    execFileSync('taskset', ['-a', '-pc', String(cpus - 1), String(redisPid)], { stdio: 'ignore' });
    execFileSync('taskset', ['-pc', '0', String(process.pid)], { stdio: 'ignore' });
    return `redis-server pinned to CPU ${cpus - 1}, the bench's main thread to CPU 0`;
  } catch {
    return 'not pinned (taskset failed)';
  }
}

function fmt(opsPerSec: number): string {
  if (opsPerSec >= 1e6) return `${(opsPerSec / 1e6).toFixed(2)} M`;
  if (opsPerSec >= 1e3) return `${(opsPerSec / 1e3).toFixed(1)} k`;
  return opsPerSec.toFixed(0);
}

function print(
  results: ScenarioResult[],
  targets: Array<{ text: string; ratio: number | undefined; holds: boolean | undefined; min: number }>,
  extra: Array<{ text: string; value: number; holds: boolean }>,
  perKey: MemoryPerKey | undefined,
  burst: BurstResult | undefined,
  procs: ProcessScaling[] | undefined,
  cpu: CpuRow[] | undefined,
): void {
  const t = new Table({ head: ['scenario', 'contender', 'ops/s', 'Tollgate ÷ it'], style: { head: [], border: [] } });
  for (const r of results) {
    const tg = r.results.find((x) => x.role === 'tollgate');
    r.results.forEach((m, i) => {
      const ratio = tg && m !== tg ? `${(tg.opsPerSec / m.opsPerSec).toFixed(2)}×` : '';
      t.push([i === 0 ? r.title : '', m.role === 'ceiling' ? `${m.name} [ceiling]` : m.name, fmt(m.opsPerSec), ratio]);
    });
  }
  console.log(t.toString());

  // The seed's table: 10,000 sequential acquires on one key.
  const seed = ['seed-memory', 'seed-redis', 'seed-hybrid'].map((id) => ({
    id,
    qps: results.find((r) => r.id === id)?.results.find((x) => x.role === 'tollgate')?.opsPerSec,
  }));
  const mem = seed[0]?.qps;
  const red = seed[1]?.qps;
  if (seed.some((s) => s.qps !== undefined)) {
    const st = new Table({
      head: ['10,000 acquires', 'seconds', 'QPS', 'memory ÷ it'],
      style: { head: [], border: [] },
    });
    for (const s of seed) {
      if (s.qps === undefined) continue;
      st.push([
        s.id.replace('seed-', ''),
        (10_000 / s.qps).toFixed(4),
        fmt(s.qps),
        mem ? `${(mem / s.qps).toFixed(0)}×` : '',
      ]);
    }
    console.log(`\n${st.toString()}`);
    if (mem && red) console.log(`memory/Redis gap: ${(mem / red).toFixed(0)}×`);
  }

  const tt = new Table({ head: ['target', 'measured', 'holds'], style: { head: [], border: [] } });
  for (const x of targets)
    if (x.ratio !== undefined) tt.push([x.text, `${x.ratio.toFixed(2)}×`, x.holds ? 'yes' : 'NO']);
  for (const x of extra) tt.push([x.text, x.value.toFixed(x.value < 100 ? 1 : 0), x.holds ? 'yes' : 'NO']);
  console.log(`\n${tt.toString()}`);

  if (cpu) {
    const ct = new Table({
      head: ['Redis CPU per decision', 'µs', 'decisions per script call'],
      style: { head: [], border: [] },
    });
    for (const c of cpu) ct.push([c.name, c.usPerDecision.toFixed(2), c.perScriptCall.toFixed(1)]);
    console.log(`\n${ct.toString()}`);
  }
  if (perKey) {
    console.log(
      `\nmemory per idle key at ${perKey.keys.toLocaleString('en')} keys: ${perKey.bytesPerKey.toFixed(0)} bytes (key strings included), ${perKey.bytesPerKeyWithoutKeyStrings.toFixed(0)} bytes without them`,
    );
  }
  if (burst) {
    console.log(
      `hybrid burst of ${burst.calls} tryAcquire on one key, capacity ${burst.capacity}: ${burst.admitted} admitted, ${burst.redisCalls} Redis script calls (bound ${burst.bound})`,
    );
  }
  if (procs) {
    const pt = new Table({
      head: ['processes on one Redis', 'Tollgate ops/s', 'rlf ops/s', 'Tollgate ÷ rlf'],
      style: { head: [], border: [] },
    });
    for (const p of procs) pt.push([p.processes, fmt(p.tollgate), fmt(p.rlf), `${(p.tollgate / p.rlf).toFixed(2)}×`]);
    console.log(`\n${pt.toString()}`);
  }
}
