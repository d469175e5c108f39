/**
 * Real redis-server processes for the tests: each started on a free loopback port, with no
 * persistence, and stopped by the suite. Nothing here mocks Redis.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RedisOptions } from 'ioredis';
import { Cluster, Redis } from './ioredis.ts';

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

/** waitForPing resolves when a redis-server on `port` answers PING. */
export async function waitForPing(port: number, timeoutMs = 10_000): Promise<void> {
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

/** serverArgs are redis-server's arguments for a test server on loopback `port`, with no persistence. */
export function serverArgs(port: number): string[] {
  return ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
}

/** spawnRedis starts one redis-server on `port` with extra arguments; resolves when it answers. */
export async function spawnRedis(port: number, extraArgs: string[] = [], dir?: string): Promise<ChildProcess> {
  requireRedisServer();
  const args = [
    ...serverArgs(port),
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

/** One node of a test cluster. */
export interface ClusterNode {
  readonly port: number;
  /** The node's cluster id (CLUSTER MYID). */
  readonly id: string;
  /** 'master' or 'replica', as at start (failovers swap them: see roles()). */
  readonly role: 'master' | 'replica';
  /** For a replica: the port of the master it replicates at start. */
  readonly masterPort: number | undefined;
  /** Whether the process is running. */
  readonly alive: boolean;
}

export interface ClusterOptions {
  /** Masters, each owning an equal share of the 16384 slots. @default 3 */
  masters?: number;
  /** Replicas per master. @default 0 */
  replicas?: 0 | 1;
  /** cluster-node-timeout in ms: how soon a dead master is failed over. @default 1000 */
  nodeTimeoutMs?: number;
  /**
   * cluster-require-full-coverage: with `false`, the masters that are up keep serving their slots
   * while another master is down (Redis's default refuses every slot then). @default true
   */
  requireFullCoverage?: boolean;
}

export interface RedisCluster {
  readonly nodes: readonly ClusterNode[];
  /** host:port of every node, for `new Cluster(startupNodes)`. */
  readonly startupNodes: readonly { host: string; port: number }[];
  /** A new ioredis Cluster client (closed by stop()). */
  client(options?: ClusterClientOptions): Cluster;
  /** A plain client to one node, e.g. for DEBUG / CLIENT PAUSE / SCRIPT FLUSH (closed by stop()). */
  nodeClient(port: number): Redis;
  /** The port of the master that owns `key`'s slot now. */
  masterOf(key: string): Promise<number>;
  /** SIGKILL one node's process (like a crash). */
  kill9(port: number): Promise<void>;
  /** Restart a killed node on its port, with its cluster config, and wait until the cluster is ok. */
  restart(port: number): Promise<void>;
  /**
   * Fail the master at `masterPort` over to its replica: `CLUSTER FAILOVER` on the replica
   * (graceful: no write lost), or with `{ kill: true }` SIGKILL the master and wait for the
   * replica's election. Resolves with the new master's port once the cluster is ok again.
   */
  failover(masterPort: number, options?: { kill?: boolean; timeoutMs?: number }): Promise<number>;
  /** Wait until every live node says cluster_state:ok and agrees on the slots' owners. */
  waitOk(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

type ClusterClientOptions = ClusterOptionsOfIoredis;
type ClusterOptionsOfIoredis = NonNullable<ConstructorParameters<typeof Cluster>[1]>;

/** A free port whose cluster bus port (port + 10000) is free too. */
async function freeClusterPort(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = await freePort();
    if (port > 55_000 || taken.has(port) || taken.has(port + 10_000)) continue;
    const busFree = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.unref();
      srv.once('error', () => resolve(false));
      srv.listen(port + 10_000, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (busFree) {
      taken.add(port);
      taken.add(port + 10_000);
      return port;
    }
  }
  throw new Error('no free port pair (port, port + 10000) for a cluster node');
}

/** One command over a raw connection to a node (for readiness checks, no ioredis reconnects). */
async function nodeCommand(port: number, ...args: string[]): Promise<string> {
  const c = new Redis(port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  c.on('error', () => {});
  try {
    await c.connect();
    return String(await c.call(args[0] as string, ...args.slice(1)));
  } finally {
    c.disconnect();
  }
}

/**
 * startCluster starts a Redis Cluster on loopback: `masters` × (1 + `replicas`) redis-server
 * processes with `--cluster-enabled yes`, joined by `redis-cli --cluster create`. Resolves when
 * every node reports cluster_state:ok.
 */
export async function startCluster(options: ClusterOptions = {}): Promise<RedisCluster> {
  const masters = options.masters ?? 3;
  const replicas = options.replicas ?? 0;
  const nodeTimeoutMs = options.nodeTimeoutMs ?? 1000;
  const fullCoverage = options.requireFullCoverage ?? true;
  requireRedisServer();
  const taken = new Set<number>();
  const count = masters * (1 + replicas);
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freeClusterPort(taken));
  const root = mkdtempSync(join(tmpdir(), 'tollgate-cluster-'));
  const argsOf = (port: number) => [
    '--cluster-enabled',
    'yes',
    '--cluster-config-file',
    `nodes-${port}.conf`,
    '--cluster-node-timeout',
    String(nodeTimeoutMs),
    // A replica may be promoted however long it was cut off: the tests kill masters on purpose.
    '--cluster-replica-validity-factor',
    '0',
    '--cluster-require-full-coverage',
    fullCoverage ? 'yes' : 'no',
  ];
  const procs = new Map<number, ChildProcess | undefined>();
  const spawned = await Promise.all(ports.map((p) => spawnRedis(p, argsOf(p), root)));
  for (const [i, p] of ports.entries()) procs.set(p, spawned[i]);
  const clients: { disconnect(): void }[] = [];

  const stopAll = async () => {
    for (const c of clients) c.disconnect();
    await Promise.all(
      [...procs.values()].map(async (p) => {
        if (!p || p.exitCode !== null || p.signalCode !== null) return;
        const done = new Promise((r) => p.once('exit', r));
        p.kill('SIGKILL');
        await done;
      }),
    );
    rmSync(root, { recursive: true, force: true });
  };

  try {
    await new Promise<void>((resolve, reject) => {
      const cli = spawn(
        'redis-cli',
        [
          '--cluster',
          'create',
          ...ports.map((p) => `127.0.0.1:${p}`),
          '--cluster-replicas',
          String(replicas),
          '--cluster-yes',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      cli.stdout?.on('data', (d) => {
        out += d.toString();
      });
      cli.stderr?.on('data', (d) => {
        out += d.toString();
      });
      cli.once('error', reject);
      cli.once('exit', (code) =>
        code === 0 ? resolve() : reject(new Error(`redis-cli --cluster create failed (${code}): ${out.slice(-2000)}`)),
      );
    });
  } catch (e) {
    await stopAll();
    throw e;
  }

  type NodeInfo = { id: string; role: 'master' | 'replica'; masterPort: number | undefined };
  const info = new Map<number, NodeInfo>();

  const live = () =>
    ports.filter((p) => {
      const proc = procs.get(p);
      return proc !== undefined && proc.exitCode === null && proc.signalCode === null;
    });

  /** Every live node: cluster_state ok, and the same owner for every slot range. */
  const waitOk = async (timeoutMs = 20_000) => {
    const until = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const states = await Promise.all(live().map((p) => nodeCommand(p, 'CLUSTER', 'INFO')));
        const ok = states.every((s) => s.includes('cluster_state:ok'));
        if (ok) {
          const shards = await Promise.all(live().map((p) => nodeCommand(p, 'CLUSTER', 'NODES')));
          const owners = shards.map((text) =>
            text
              .split('\n')
              .filter((l) => l.includes('master') && !l.includes('fail') && /\s\d+-\d+/.test(l))
              .map((l) => `${l.split(' ')[1]?.split('@')[0]} ${l.split(' ').slice(8).join(' ')}`)
              .sort()
              .join('|'),
          );
          if (owners.every((o) => o === owners[0]) && (owners[0]?.split('|').length ?? 0) === masters) return;
          last = 'nodes disagree on slot owners';
        } else last = states.join('\n---\n');
      } catch (e) {
        last = String(e);
      }
      if (Date.now() > until) throw new Error(`cluster not ok within ${timeoutMs} ms: ${last.slice(0, 1500)}`);
      await sleep(50);
    }
  };

  try {
    await waitOk();
    for (const p of ports) {
      const id = (await nodeCommand(p, 'CLUSTER', 'MYID')).trim();
      info.set(p, { id, role: 'master', masterPort: undefined });
    }
    // Each node's own word on its role (another node's CLUSTER NODES may not have heard yet
    // through gossip which nodes became replicas).
    for (const p of ports) {
      const repl = await nodeCommand(p, 'INFO', 'replication');
      const masterPort = /master_port:(\d+)/.exec(repl)?.[1];
      if (repl.includes('role:slave') && masterPort !== undefined) {
        info.set(p, { ...(info.get(p) as NodeInfo), role: 'replica', masterPort: Number(masterPort) });
      }
    }
    if (replicas > 0 && [...info.values()].filter((i) => i.role === 'replica').length !== masters * replicas) {
      throw new Error('redis-cli --cluster create did not make the expected replicas');
    }
    // Replicas take a full sync first: until then a failover would lose every write.
    const until = Date.now() + 20_000;
    for (const p of ports.filter((q) => info.get(q)?.role === 'replica')) {
      while (!(await nodeCommand(p, 'INFO', 'replication')).includes('master_link_status:up')) {
        if (Date.now() > until) throw new Error(`replica ${p} did not sync with its master`);
        await sleep(25);
      }
    }
  } catch (e) {
    await stopAll();
    throw e;
  }

  const masterOf = async (key: string): Promise<number> => {
    const slot = Number(await nodeCommand(live()[0] as number, 'CLUSTER', 'KEYSLOT', key));
    const slots = JSON.parse(JSON.stringify(await slotsOf(live()[0] as number))) as [
      number,
      number,
      [string, number],
    ][];
    for (const [from, to, [, port]] of slots) if (slot >= from && slot <= to) return port;
    throw new Error(`no master owns slot ${slot}`);
  };

  const kill9 = async (port: number) => {
    const p = procs.get(port);
    procs.set(port, undefined);
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const done = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await done;
  };

  return {
    nodes: ports.map((port) => {
      const i = info.get(port) as NodeInfo;
      return {
        port,
        id: i.id,
        role: i.role,
        masterPort: i.masterPort,
        get alive() {
          return live().includes(port);
        },
      };
    }),
    startupNodes: ports.map((port) => ({ host: '127.0.0.1', port })),
    client(opts) {
      const c = new Cluster(
        ports.map((port) => ({ host: '127.0.0.1', port })),
        opts,
      );
      c.on('error', () => {});
      clients.push(c);
      return c;
    },
    nodeClient(port) {
      const c = new Redis(port, '127.0.0.1');
      c.on('error', () => {});
      clients.push(c);
      return c;
    },
    masterOf,
    kill9,
    async restart(port) {
      await kill9(port);
      procs.set(port, await spawnRedis(port, argsOf(port), root));
      await waitOk();
    },
    async failover(masterPort, opts = {}) {
      const replica = ports.find((p) => info.get(p)?.masterPort === masterPort && live().includes(p));
      if (replica === undefined) throw new Error(`no live replica of master ${masterPort}`);
      const until = Date.now() + (opts.timeoutMs ?? 15_000);
      if (opts.kill) await kill9(masterPort);
      else await nodeCommand(replica, 'CLUSTER', 'FAILOVER');
      // Wait for the replica to call itself master, then for the cluster to settle.
      for (;;) {
        const role = await nodeCommand(replica, 'ROLE').catch(() => '');
        if (role.startsWith('master')) break;
        if (Date.now() > until) throw new Error(`replica ${replica} was not promoted in time`);
        await sleep(25);
      }
      await waitOk(Math.max(1000, until - Date.now()));
      info.set(replica, { ...(info.get(replica) as NodeInfo), role: 'master', masterPort: undefined });
      const old = info.get(masterPort);
      if (old) info.set(masterPort, { ...old, role: 'replica', masterPort: replica });
      return replica;
    },
    waitOk,
    stop: stopAll,
  };
}

async function slotsOf(port: number): Promise<unknown> {
  const c = new Redis(port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  c.on('error', () => {});
  try {
    await c.connect();
    return await c.cluster('SLOTS');
  } finally {
    c.disconnect();
  }
}
