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
import { Redis } from './ioredis.ts';
import { freePort, waitForPing } from './redis.ts';

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
