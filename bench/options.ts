/** Command-line checks the benches share: a bad option is a UsageError, which they report with exit status 2. */
export class UsageError extends Error {}

/** `text` as an integer from 1 (0 with `zero`) to `max`; else a UsageError naming `flag`. */
export function positiveInt(text: string, flag: string, max: number, zero = false): number {
  if (!/^\d+$/.test(text) || Number(text) < (zero ? 0 : 1) || Number(text) > max) throw new UsageError(`${flag} must be an integer from ${zero ? 0 : 1} to ${max}, got "${text}"`);
  return Number(text);
}
