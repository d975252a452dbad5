// The demo background worker: a non-http process type, so berth gives it no port and no traffic. It
// proves it is alive by touching $BERTH_HEARTBEAT_FILE every second; with `heartbeat_timeout` set,
// berth restarts it when the file goes stale.
//
// The "hang" switch shows that restart: create a file named `hang` in the worker's working directory
// (the release), or send it SIGUSR2. It then stops working and stops touching the file, as a worker
// stuck on a lost connection would, and berth restarts it (reason `heartbeat` in status and history).
// SIGUSR2 again un-hangs it; a `hang` file hangs every new worker too, until the file is removed.
import { existsSync, utimesSync, writeFileSync } from 'node:fs';

const label = `${process.env.BERTH_PROCESS ?? 'worker'}.${process.env.BERTH_INSTANCE ?? '0'}`;
const release = process.env.BERTH_RELEASE ?? 'none';
const heartbeat = process.env.BERTH_HEARTBEAT_FILE;
const everyMs = Number(process.env.WORKER_TICK_MS ?? 1000);

let hanging = false;
let jobs = 0;

console.log(`worker ${label} started: release ${release} pid ${process.pid}`);

setInterval(() => {
  const hang = hanging || existsSync('hang');
  if (hang) {
    if (jobs >= 0) console.log(`worker ${label} hanging: no more heartbeats`);
    jobs = -1;
    return;
  }
  if (jobs < 0) console.log(`worker ${label} working again`);
  jobs = Math.max(jobs, 0) + 1;
  if (heartbeat) {
    const now = new Date();
    try {
      utimesSync(heartbeat, now, now);
    } catch {
      writeFileSync(heartbeat, '');
    }
  }
  if (jobs % 10 === 1) console.log(`worker ${label} processed ${jobs} job(s) on release ${release}`);
}, everyMs);

process.on('SIGUSR2', () => {
  hanging = !hanging;
});

process.on('SIGTERM', () => {
  console.log(`worker ${label} stopping`);
  process.exit(0);
});
