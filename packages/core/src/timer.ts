/** setTimeout's longest delay: a longer one would fire after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** arm runs `fn` after `ms` on `holder.timer` (cleared with clearTimeout), however long `ms` is. */
export function arm(holder: { timer: ReturnType<typeof setTimeout> | undefined }, ms: number, fn: () => void): void {
  if (ms <= MAX_TIMER_MS) holder.timer = setTimeout(fn, ms);
  else holder.timer = setTimeout(() => arm(holder, ms - MAX_TIMER_MS, fn), MAX_TIMER_MS);
}
