import { readdirSync, readFileSync } from 'node:fs';

/** How long one scan of /proc for group members serves every group's rssBytes() (one status call). */
const MEMBER_SCAN_TTL_MS = 500;
const RSS_RE = /VmRSS:\s+(\d+)\s+kB/;
/** The last scan: pgid -> pids of its members, and when it was made. */
let memberScan: { at: number; groups: Map<number, number[]> } | null = null;

/**
 * The process group a Child (child.ts) runs in: it is spawned `detached`, so the shell that runs the
 * command leads a new group (pgid = its pid) and everything it starts joins it unless it detaches
 * itself. Signalling the group reaches them all, so nothing outlives its instance, task or command.
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
   * One pass over /proc, synchronous (a few microseconds a process, cheaper than as many async reads):
   * a stop calls it only when events cannot tell (Child#stop), never in a loop.
   */
  running(): boolean {
    if (!this.exists()) return false;
    if (process.platform !== 'linux') return true;
    const pids = procPids();
    if (pids === null) return true;
    for (const pid of pids) {
      const fields = statFields(pid);
      if (fields === null || Number(fields[2]) !== this.pgid) continue;
      if (fields[0] !== 'Z' && fields[0] !== 'X') return true;
    }
    return false;
  }

  /**
   * Resident memory of the whole group: the sum of VmRSS over every process whose pgrp is this group
   * (gunicorn's workers, a shell's children), from /proc; null off Linux or when nothing is left. For
   * `berth status` only, never the request path: it reads /proc synchronously. One scan of /proc finds
   * the members of every group and is reused for MEMBER_SCAN_TTL_MS, so a status of many instances
   * scans once; the leader itself is always counted, even when it started after the scan.
   */
  rssBytes(): number | null {
    if (process.platform !== 'linux') return null;
    const now = Date.now();
    if (memberScan === null || now - memberScan.at > MEMBER_SCAN_TTL_MS) memberScan = { at: now, groups: scanGroups() };
    const pids = new Set(memberScan.groups.get(this.pgid));
    pids.add(this.pgid);
    let total = 0;
    let found = false;
    for (const pid of pids) {
      let status: string;
      try {
        status = readFileSync(`/proc/${pid}/status`, 'utf8');
      } catch {
        continue; // gone since the scan
      }
      // A pid reused by a process of another group since the scan is not ours.
      if (pid !== this.pgid && groupOf(pid) !== this.pgid) continue;
      const m = RSS_RE.exec(status);
      if (m === null) continue; // a zombie holds no memory
      total += Number(m[1]) * 1024;
      found = true;
    }
    return found ? total : null;
  }
}

/**
 * The fields of /proc/<pid>/stat after "pid (comm) ": state, ppid, pgrp... comm may hold spaces and
 * parentheses, so they are taken after the last ')'. Null when the process is gone.
 */
export function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

function groupOf(pid: number): number | null {
  const fields = statFields(pid);
  return fields === null ? null : Number(fields[2]);
}

/** Every process id in /proc, or null when /proc cannot be read (not Linux, or hidden). */
function procPids(): number[] | null {
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return null;
  }
  const pids: number[] = [];
  for (const name of names) {
    const c = name.charCodeAt(0);
    if (c >= 48 && c <= 57) pids.push(Number(name));
  }
  return pids;
}

/** Every process group on the machine with its members, from one pass over /proc. */
function scanGroups(): Map<number, number[]> {
  const groups = new Map<number, number[]>();
  for (const pid of procPids() ?? []) {
    const pgrp = groupOf(pid);
    if (pgrp === null) continue;
    const list = groups.get(pgrp);
    if (list) list.push(pid);
    else groups.set(pgrp, [pid]);
  }
  return groups;
}
