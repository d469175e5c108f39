/**
 * The child's half of runTogether (test/support/spawn.ts): ready() prints READY and resolves,
 * with Date.now() ms, when the parent writes GO on stdin (once every child is ready).
 */
export function ready(): Promise<number> {
  return new Promise((resolve) => {
    let input = '';
    const onData = (d: Buffer) => {
      input += d.toString();
      if (!input.split('\n').includes('GO')) return;
      process.stdin.off('data', onData);
      process.stdin.pause();
      resolve(Date.now());
    };
    process.stdin.on('data', onData);
    console.log('READY');
  });
}
