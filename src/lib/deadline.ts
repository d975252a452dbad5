/**
 * Whether `work` settles within `ms`: true once it does (resolved or rejected), false at the deadline.
 * The timer is cleared as soon as either happens and never holds the process open, so waiting on
 * something that may never end (a pipe a stray process keeps open) costs nothing after the answer.
 */
export function within(work: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), Math.max(0, ms));
    timer.unref();
    const done = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    work.then(done, done);
  });
}
