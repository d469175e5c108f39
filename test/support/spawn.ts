/**
 * Child Node processes running TypeScript (via tsx) against the packages' source, on the same Node
 * binary as the test runner (so the Node 24 CI leg tests Node 24 in the children too).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface ChildResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  /** Killed after this many ms. @default 60_000 */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

interface Running {
  child: ChildProcess;
  /** Resolves when a line of stdout equals `line` (rejects if the child exits first). */
  printed(line: string): Promise<void>;
  done: Promise<ChildResult>;
}

function start(file: string, args: string[], options: RunOptions, stdin: 'ignore' | 'pipe'): Running {
  const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=tollgate-source', file, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...options.env },
    stdio: [stdin, 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const watchers: Array<{ line: string; resolve: () => void }> = [];
  child.stdout?.on('data', (d) => {
    stdout += d.toString();
    for (const w of watchers.splice(0)) {
      if (stdout.split('\n').includes(w.line)) w.resolve();
      else watchers.push(w);
    }
  });
  child.stderr?.on('data', (d) => {
    stderr += d.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
  const done = new Promise<ChildResult>((resolvePromise, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
  const printed = (line: string) =>
    new Promise<void>((resolveLine, reject) => {
      if (stdout.split('\n').includes(line)) return resolveLine();
      watchers.push({ line, resolve: resolveLine });
      void done.then((r) =>
        reject(new Error(`child exited (code ${r.code}) before printing ${line}: ${r.stderr.slice(-2000)}`)),
      );
    });
  return { child, printed, done };
}

/** runTs runs `file` (a .ts path) with `args` and resolves when it exits (killed after timeoutMs). */
export function runTs(file: string, args: string[] = [], options: RunOptions = {}): Promise<ChildResult> {
  return start(file, args, options, 'ignore').done;
}

/**
 * runTogether runs `file` once per entry of `argsList` and starts them together: each child
 * boots, connects and prints READY (test/workers/barrier.ts), and only when all have does every
 * child get GO on its stdin. So a child slow to boot on a busy machine delays the start instead
 * of running alone. Resolves with each child's result, in `argsList` order.
 */
export async function runTogether(
  file: string,
  argsList: string[][],
  options: RunOptions = {},
): Promise<ChildResult[]> {
  const children = argsList.map((args) => start(file, args, options, 'pipe'));
  try {
    await Promise.all(children.map((c) => c.printed('READY')));
  } catch (e) {
    for (const c of children) c.child.kill('SIGKILL');
    throw e;
  }
  for (const c of children) c.child.stdin?.end('GO\n');
  return Promise.all(children.map((c) => c.done));
}

/** lastJson parses the last line of a child's stdout that is a JSON object. */
export function lastJson<T>(r: ChildResult): T {
  const line = r.stdout
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{'));
  if (line === undefined) throw new Error(`child printed no JSON (code ${r.code}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(line) as T;
}
