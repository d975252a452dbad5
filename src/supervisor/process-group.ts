import { readdir, readFile } from 'node:fs/promises';

/**
 * The process group an instance runs in. Instances are spawned `detached`, so the shell that runs the
 * command leads a new group (pgid = its pid) and everything it starts joins it unless it detaches
 * itself. Signalling the group reaches them all, so nothing outlives its instance.
 */
export class ProcessGroup {
  readonly pgid: number;

  constructor(pgid: number) {
    this.pgid = pgid;
  }

  /**
   * Sends `signal` to every member. Returns false when the group no longer exists (ESRCH), which is
   * not an error here: the processes may have exited on their own a moment ago.
   */
  signal(signal: NodeJS.Signals | 0): boolean {
    try {
      process.kill(-this.pgid, signal);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ESRCH') return false;
      // EPERM: some member belongs to another user (a setuid helper); the group still exists.
      if (code === 'EPERM') return true;
      throw err;
    }
  }

  /** Whether any member still exists, zombies included (what `kill(-pgid, 0)` sees). */
  exists(): boolean {
    return this.signal(0);
  }

  /**
   * Whether any member is still running. Members whose parent died are reparented to PID 1 and stay
   * zombies until it reaps them; in a container PID 1 may reap late or never. A zombie has exited and
   * holds nothing, so on Linux they are skipped by reading /proc. Elsewhere, existing counts as running.
   */
  async running(): Promise<boolean> {
    if (!this.exists()) return false;
    if (process.platform !== 'linux') return true;
    let names: string[];
    try {
      names = await readdir('/proc');
    } catch {
      return true;
    }
    for (const name of names) {
      const c = name.charCodeAt(0);
      if (c < 48 || c > 57) continue;
      let stat: string;
      try {
        stat = await readFile(`/proc/${name}/stat`, 'utf8');
      } catch {
        continue; // exited while we looked
      }
      // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so parse after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) !== this.pgid) continue;
      if (fields[0] !== 'Z' && fields[0] !== 'X') return true;
    }
    return false;
  }
}
