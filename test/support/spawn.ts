/**
 * Child Node processes running TypeScript (via tsx) against the packages' source, on the same Node
 * binary as the test runner (so the Node 24 CI leg tests Node 24 in the children too).
 */
import { spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface ChildResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** runTs runs `file` (a .ts path) with `args` and resolves when it exits (killed after timeoutMs). */
export function runTs(file: string, args: string[] = [], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ChildResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=tollgate-source', file, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
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
