/**
 * A redis-server whose instructions are counted: it runs under valgrind's callgrind, and
 * `instructions(run)` tells how many instructions the server executed while `run` ran (from the
 * difference of two callgrind dumps). The count repeats within ~1% whatever else the machine
 * is doing, unlike the µs of `INFO commandstats`. Used by the Redis CPU test and
 * `pnpm bench:instructions`.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Evaluator, deadlineArg, decisionArgs } from '@tollgate/core/internal';
import { Redis } from './ioredis.ts';
import { freePort, serverArgs, waitForPing } from './redis.ts';

/** hasCallgrind tells whether valgrind, callgrind_control and redis-server are installed. */
export function hasCallgrind(): boolean {
  try {
    for (const cmd of ['valgrind', 'callgrind_control', 'redis-server']) {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    }
    return true;
  } catch {
    return false;
  }
}

export interface CountedRedis {
  /** A new ioredis client to this server (closed by stop()). */
  client(): Redis;
  /** Redis's version, as INFO gives it. */
  version(): Promise<string>;
  /** The instructions the server executed while `run` ran. */
  instructions(run: () => Promise<void>): Promise<number>;
  stop(): Promise<void>;
}

/** startCountedRedis starts redis-server under callgrind on a free loopback port. */
export async function startCountedRedis(): Promise<CountedRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-callgrind-'));
  const proc: ChildProcess = spawn(
    'valgrind',
    ['--tool=callgrind', `--callgrind-out-file=${dir}/cg.%p.out`, 'redis-server', ...serverArgs(port)],
    { stdio: 'ignore' },
  );
  // Under valgrind the server takes a few seconds to start.
  await waitForPing(port, 60_000);
  const clients: Redis[] = [];
  const admin = new Redis(port, '127.0.0.1');
  clients.push(admin);
  let dumps = 0;
  /** The instructions since the previous dump. valgrind acts on a dump request when the server next runs. */
  const dump = async (): Promise<number> => {
    dumps++;
    execFileSync('callgrind_control', ['-d', String(proc.pid)], { stdio: 'ignore' });
    const file = join(dir, `cg.${proc.pid}.out.${dumps}`);
    for (;;) {
      await admin.ping();
      if (existsSync(file)) {
        const m = /^summary: (\d+)/m.exec(readFileSync(file, 'utf8'));
        if (m) return Number(m[1]);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return {
    client() {
      const c = new Redis(port, '127.0.0.1');
      clients.push(c);
      return c;
    },
    async version() {
      return /redis_version:(\S+)/.exec(await admin.info('server'))?.[1] ?? '?';
    },
    async instructions(run) {
      await dump();
      await run();
      return dump();
    },
    async stop() {
      for (const c of clients) c.disconnect();
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * FLOOR_SCRIPT is the least any decision of Tollgate's design costs Redis: only the three commands
 * an allowed decision needs (TIME, GET, SET … PX), with a constant value and reply of the usual
 * sizes.
 */
export const FLOOR_SCRIPT = `local t = redis.call('TIME')
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], '${'x'.repeat(72)}', 'PX', 3600000)
return '${'x'.repeat(40)}'`;

/** EMPTY_SCRIPT does nothing and answers a reply of the usual size. */
export const EMPTY_SCRIPT = `return '${'x'.repeat(40)}'`;

/**
 * standIn loads `lua` on `client` and returns a call that sends it for a key with the arguments
 * RedisBackend sends a lone decision (a spec, a deadline, a fresh call id).
 */
export async function standIn(client: Redis, lua: string): Promise<(key: string) => Promise<unknown>> {
  const sha = (await client.script('LOAD', lua)) as string;
  const ev = client as unknown as Evaluator;
  const spec = decisionArgs('t', { ratePerMs: 1000 / 3_600_000, capacity: 1e9 }, 1, -1);
  const deadline = deadlineArg(-60_000);
  let seq = 0;
  return (key) =>
    ev.evalshaBuffer(sha, 1, `stand-in:{${key}}:b`, spec, deadline, `standin0${(seq++).toString(36).padStart(8, '0')}`);
}
