/** Removing what a test made, in a way that never hides the test's other clean-ups. */
import type { TestContext } from 'node:test';
import { rm } from 'node:fs/promises';

/**
 * Removes `path` after the test. Hooks run in the order they were added, so a process started after
 * the path was made (a gateway, a supervisor's instances) may still be writing in it: the removal
 * retries while its last files go. It never throws: node:test skips the hooks after one that throws,
 * such a process's stop among them, and a left-over process keeps the test file running.
 */
export function removeAfter(t: Pick<TestContext, 'after'>, path: string): void {
  t.after(() => rm(path, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }).catch(() => {}));
}
