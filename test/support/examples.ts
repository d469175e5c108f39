/**
 * Running the examples as a user would: a child process on the test runner's own Node, without a
 * TTY and offline (no OPENAI_* or ANTHROPIC_* variable but those a test passes), and reading the
 * numbers they print.
 */
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { ROOT } from './spawn.ts';

export const EXAMPLES = resolve(ROOT, 'examples');

/** What one run printed, and how long it took (ms). */
export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * run starts `command args` in `cwd` without a TTY and offline: no OPENAI_* or ANTHROPIC_*
 * variable but those of `env`.
 */
export function run(
  command: string,
  args: string[],
  cwd: string,
  timeoutMs = 60_000,
  env: NodeJS.ProcessEnv = {},
): Promise<Run> {
  const base: NodeJS.ProcessEnv = { ...process.env, CI: 'true', NO_COLOR: '1' };
  for (const name of Object.keys(base))
    if (name.startsWith('OPENAI_') || name.startsWith('ANTHROPIC_')) delete base[name];
  const start = performance.now();
  return new Promise((done, fail) => {
    const child = spawn(command, args, { cwd, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
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

/** runExample runs examples/<file> (TypeScript, through tsx) on this Node with `args` and the extra `env`. */
export const runExample = (file: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) =>
  run(process.execPath, ['--import', 'tsx', '--conditions=tollgate-source', file, ...args], EXAMPLES, 60_000, env);

/** explain is a run's exit code and output, for an assertion's message. */
export const explain = (r: Omit<Run, 'ms'>) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** numbers are the numbers in a line of output, in order. */
export function numbers(line: string): number[] {
  return [...line.matchAll(/-?\d+(?:\.\d+)?/g)].map((m) => Number(m[0]));
}

/** lineStarting is the first line of `out` starting with `prefix` (throws, showing `out`, when none does). */
export function lineStarting(out: string, prefix: string): string {
  const line = out.split('\n').find((l) => l.startsWith(prefix));
  if (line === undefined) throw new Error(`no line starting with ${JSON.stringify(prefix)} in:\n${out}`);
  return line;
}
