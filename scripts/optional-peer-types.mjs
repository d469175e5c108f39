// Puts a ts-ignore directive above each type import of an optional peer dependency in built
// declarations: an app that does not install the peer (ioredis for @tollgate/core, when it uses
// the memory backend only) then type-checks with `skipLibCheck: false`, the peer's types read as
// `any`; with the peer installed they resolve as usual. (tsc drops such comments from its output,
// and an expect-error directive would itself be an error wherever the peer is installed.)
//   node scripts/optional-peer-types.mjs <dist dir> <peer> [<peer> …]
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [dir, ...peers] = process.argv.slice(2);
if (dir === undefined || peers.length === 0) throw new Error('usage: optional-peer-types.mjs <dist dir> <peer>…');
const from = new RegExp(
  `^import type .* from '(?:${peers.map((p) => p.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')).join('|')})';$`,
);
let marked = 0;
for (const entry of readdirSync(dir, { recursive: true })) {
  const file = join(dir, String(entry));
  if (!file.endsWith('.d.ts')) continue;
  const lines = readFileSync(file, 'utf8').split('\n');
  const out = [];
  for (const line of lines) {
    if (from.test(line) && !out.at(-1)?.startsWith('// @ts-ignore')) {
      out.push(`// @ts-ignore ${peers.join(', ')}: an optional peer dependency; without it, its types are any`);
      marked++;
    }
    out.push(line);
  }
  writeFileSync(file, out.join('\n'));
}
console.log(`optional-peer-types: ${marked} import(s) of ${peers.join(', ')} marked in ${dir}`);
