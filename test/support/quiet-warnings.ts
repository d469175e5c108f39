/**
 * Vitest setup: the tests break Redis on purpose, and every limiter without `onError` then prints
 * one TollgateWarning, as it should for an app. Here they are expected, so they stay off stderr,
 * where they buried what a failing run printed. Every other warning is printed as Node prints
 * it, and tests that check the TollgateWarning listen for 'warning' themselves.
 */
const printers = process.listeners('warning');
process.removeAllListeners('warning');
process.on('warning', (w) => {
  if (w.name === 'TollgateWarning') return;
  for (const print of printers) print(w);
});
