/**
 * Every TypeScript snippet in README.md compiles as pasted: each ```ts block becomes a module of
 * its own and one `tsc` run type-checks them all against the packages' source.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, test } from 'vitest';
import { ROOT } from './support/spawn.ts';

const run = promisify(execFile);

/** The ```ts blocks of a markdown text, with the line each starts on. */
export function tsBlocks(markdown: string): Array<{ line: number; code: string }> {
  const blocks: Array<{ line: number; code: string }> = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]?.trim() !== '```ts') continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && lines[end]?.trim() !== '```') end++;
    blocks.push({ line: start + 1, code: lines.slice(start, end).join('\n') });
    i = end;
  }
  return blocks;
}

test('every TypeScript snippet in README.md compiles as pasted', async () => {
  const blocks = tsBlocks(readFileSync(join(ROOT, 'README.md'), 'utf8'));
  expect(blocks.length).toBeGreaterThanOrEqual(8);
  const dir = join(ROOT, 'test', '.tmp-readme');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  for (const b of blocks) {
    const file = `readme-line-${b.line}.ts`;
    // `export {}` makes each snippet a module of its own, so their names never collide.
    writeFileSync(join(dir, file), `${b.code}\nexport {};\n`);
    files.push(file);
  }
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      extends: '../../tsconfig.base.json',
      compilerOptions: { noEmit: true, noUnusedLocals: false, noUnusedParameters: false, types: ['node'] },
      files,
    }),
  );
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  const out = await run(process.execPath, [tsc, '-p', join(dir, 'tsconfig.json')], { cwd: ROOT }).then(
    () => '',
    (e: { stdout?: string }) => e.stdout ?? String(e),
  );
  // Name the README line of each error, not the temporary file.
  expect(out.replace(/readme-line-(\d+)\.ts/g, 'README.md snippet at line $1')).toBe('');
  rmSync(dir, { recursive: true, force: true });
}, 120_000);
