/**
 * Redis instructions per decision: redis-server runs under valgrind's callgrind, which counts the
 * instructions it executes, so the figures repeat to the instruction whatever else the machine
 * is doing (`INFO commandstats` µs, in `pnpm bench --only redis-cpu`, swing ±20% on a shared
 * machine). Counted: everything the server does for the decisions (reading and parsing the
 * commands, the script, its Redis commands, the reply and its write), between two dumps.
 *
 * Besides the contenders of the redis-cpu row, two stand-ins show the floor of Tollgate's design:
 * a script that only runs the three commands every allowed decision needs (TIME, GET, and
 * SET … PX, which DESIGN.md's contract asks for) with a constant value, on Tollgate's arguments
 * and reply; and an empty script on the same arguments.
 *
 *   pnpm bench:instructions            (needs valgrind: apt-get install valgrind)
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { RateLimiter, RedisBackend } from '@tollgate/core';
import { type Evaluator, deadlineArg, decisionArgs } from '@tollgate/core/internal';
import Table from 'cli-table3';
import { Redis } from 'ioredis';
import { RateLimiterRedis } from 'rate-limiter-flexible';
import { inFlight } from './harness.js';

const DECISIONS = Number(process.env.DECISIONS ?? 3000);
const WARMUP = 2000;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function has(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The instructions of callgrind dump `n` (each dump counts from the one before). */
function dumpTotal(dir: string, pid: number, n: number): number | undefined {
  const file = path.join(dir, `cg.${pid}.out.${n}`);
  if (!existsSync(file)) return undefined;
  const m = /^summary: (\d+)/m.exec(readFileSync(file, 'utf8'));
  return m ? Number(m[1]) : undefined;
}

const STUB_TIME_GET_SET = `local t = redis.call('TIME')
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], '${'x'.repeat(72)}', 'PX', 3600000)
return '${'x'.repeat(40)}'`;
const STUB_EMPTY = `return '${'x'.repeat(40)}'`;

async function main(): Promise<void> {
  for (const cmd of ['valgrind', 'callgrind_control', 'redis-server']) {
    if (!has(cmd)) {
      console.error(`bench:instructions needs ${cmd} (apt-get install valgrind redis-server)`);
      process.exit(1);
    }
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tollgate-cg-'));
  const port = await freePort();
  const server = spawn(
    'valgrind',
    [
      '--tool=callgrind',
      `--callgrind-out-file=${dir}/cg.%p.out`,
      'redis-server',
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
    ],
    { stdio: 'ignore' },
  );
  const pid = server.pid as number;
  // valgrind takes a few seconds to start the server.
  for (let i = 0; !(await listening(port)); i++) {
    if (i > 150) throw new Error(`redis-server under valgrind did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const client = new Redis({ port });
  const version = /redis_version:(\S+)/.exec(await client.info('server'))?.[1] ?? '?';
  let dumps = 0;
  /** Asks for a dump and waits for it: valgrind acts on it when the server next runs. */
  const dump = async (): Promise<number> => {
    dumps++;
    execFileSync('callgrind_control', ['-d', String(pid)], { stdio: 'ignore' });
    for (;;) {
      await client.ping();
      const total = dumpTotal(dir, pid, dumps);
      if (total !== undefined) return total;
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const keys = Array.from({ length: 1000 }, (_, i) => `user-${i}`);
  // One limiter per contender, on keys of its own: each measures its own path alone.
  const limiter = (prefix: string) =>
    new RateLimiter({
      backend: new RedisBackend({ client, prefix, timeoutMs: 60_000 }),
      policy: { rate: 1000, per: '1h', capacity: 1e9 },
      name: 'b',
    });
  const single = limiter('cg1:');
  const batched = limiter('cg2:');
  const rlf = new RateLimiterRedis({ storeClient: client, points: 1e9, duration: 3600, keyPrefix: 'cgrlf' });
  const ev = client as unknown as Evaluator;
  const spec = decisionArgs('t', { ratePerMs: 1000 / 3_600_000, capacity: 1e9 }, 1, -1);
  const deadline = deadlineArg(-60_000);
  const stub = async (lua: string) => {
    const sha = (await client.script('LOAD', lua)) as string;
    let seq = 0;
    return (k: string) => ev.evalshaBuffer(sha, 1, `stub:{${k}}:b`, spec, deadline, `stubcall${(seq++).toString(36)}`);
  };
  const floor = await stub(STUB_TIME_GET_SET);
  const empty = await stub(STUB_EMPTY);
  const seq = (op: (k: string) => Promise<unknown>) => async (n: number) => {
    for (let i = 0; i < n; i++) await op(keys[i % 1000] as string);
  };
  const par = (op: (k: string) => Promise<unknown>) => (n: number) =>
    inFlight(n, 256, (i) => op(keys[i % 1000] as string));
  const contenders = [
    { name: 'Tollgate, single script (sequential)', run: seq((k) => single.tryAcquire(k)) },
    { name: 'Tollgate, batch script (256 in flight)', run: par((k) => batched.tryAcquire(k)) },
    { name: 'rate-limiter-flexible (sequential)', run: seq((k) => rlf.consume(k)) },
    { name: 'rate-limiter-flexible (256 in flight)', run: par((k) => rlf.consume(k)) },
    { name: 'floor: TIME + GET + SET … PX alone, Tollgate arguments (sequential)', run: seq(floor) },
    { name: 'floor: empty script, Tollgate arguments (sequential)', run: seq(empty) },
  ];
  const rows: Array<[string, number]> = [];
  for (const c of contenders) {
    console.error(`  ${c.name} …`);
    await c.run(WARMUP);
    await dump();
    await c.run(DECISIONS);
    rows.push([c.name, (await dump()) / DECISIONS]);
  }
  client.disconnect();
  server.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });

  const rlfSeq = rows[2]?.[1] as number;
  const t = new Table({ head: ['Redis instructions per decision (callgrind)', 'instructions', '÷ rlf sequential'] });
  for (const [name, ir] of rows) t.push([name, Math.round(ir).toLocaleString('en'), (ir / rlfSeq).toFixed(2)]);
  console.log(t.toString());
  console.log(
    `pnpm bench:instructions — Redis ${version} under valgrind (callgrind), ${DECISIONS.toLocaleString('en')} decisions on 1,000 keys after ${WARMUP.toLocaleString('en')} of warm-up`,
  );
}

await main();
