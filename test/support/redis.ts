/**
 * Real redis-server processes for the tests: each started on a free loopback port, with no
 * persistence, and stopped by the suite. Nothing here mocks Redis.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';

const INSTALL_HINT =
  'redis-server not found: install it (Debian/Ubuntu: `apt-get update && apt-get install -y redis-server`) or run .ci/run, which does';

let checked = false;
/** requireRedisServer fails with one clear line when redis-server is not installed. */
export function requireRedisServer(): void {
  if (checked) return;
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'pipe' });
  } catch {
    throw new Error(INSTALL_HINT);
  }
  checked = true;
}

/** freePort asks the OS for a free loopback port. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** A new ioredis client to this server (closed by stop()). */
  client(options?: RedisOptions): Redis;
  /** SIGKILL the server (like a crash). */
  kill9(): Promise<void>;
  /** Start it again on the same port (after kill9/stop). */
  restart(): Promise<void>;
  /** Stop the server and close every client made by client(). */
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitForPing(port: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const sock = net.connect(port, '127.0.0.1');
      let buf = '';
      sock.setTimeout(500);
      sock.on('connect', () => sock.write('PING\r\n'));
      sock.on('data', (d) => {
        buf += d.toString();
        if (buf.includes('\r\n')) {
          sock.destroy();
          resolve(buf.startsWith('+PONG'));
        }
      });
      sock.on('error', () => resolve(false));
      sock.on('timeout', () => {
        sock.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`redis-server on port ${port} did not answer PING within ${timeoutMs} ms`);
    await sleep(25);
  }
}

/** spawnRedis starts one redis-server on `port` with extra arguments; resolves when it answers. */
export async function spawnRedis(port: number, extraArgs: string[] = [], dir?: string): Promise<ChildProcess> {
  requireRedisServer();
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--daemonize',
    'no',
    '--enable-debug-command',
    'local',
    '--loglevel',
    'warning',
    ...(dir ? ['--dir', dir] : []),
    ...extraArgs,
  ];
  const proc = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr?.on('data', (d) => {
    stderr += d.toString();
  });
  const exited = new Promise<never>((_, reject) =>
    proc.once('exit', (code) => reject(new Error(`redis-server exited early (code ${code}): ${stderr.trim()}`))),
  );
  exited.catch(() => {});
  await Promise.race([waitForPing(port), exited]);
  return proc;
}

/** startRedis starts a standalone redis-server on a free loopback port. */
export async function startRedis(extraArgs: string[] = []): Promise<RedisServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-redis-'));
  let proc: ChildProcess | undefined = await spawnRedis(port, extraArgs, dir);
  const clients: Redis[] = [];
  const killProc = async (signal: NodeJS.Signals) => {
    const p = proc;
    proc = undefined;
    if (!p || p.exitCode !== null) return;
    const done = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await done;
  };
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    client(options) {
      const c = new Redis(port, '127.0.0.1', { lazyConnect: false, ...options });
      c.on('error', () => {});
      clients.push(c);
      return c;
    },
    kill9: () => killProc('SIGKILL'),
    async restart() {
      await killProc('SIGKILL');
      proc = await spawnRedis(port, extraArgs, dir);
    },
    async stop() {
      for (const c of clients) c.disconnect();
      await killProc('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
