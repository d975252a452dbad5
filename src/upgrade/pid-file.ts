/**
 * `berth start --pid-file F`: the gateway's pid, for a service manager (systemd's PIDFile=). An upgrade's
 * new gateway writes its own pid there before the old one exits, so the manager follows the gateway to
 * its new process rather than taking the old one's exit for the service's end.
 */
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';

/** Writes this process's pid to `file`, atomically (a reader never sees it half written). */
export async function writePidFile(file: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${process.pid}\n`, { mode: 0o644 });
  await rename(tmp, file);
}

/** Removes `file` if it still holds this process's pid (after an upgrade it holds the new gateway's). */
export async function removePidFile(file: string): Promise<void> {
  const text = await readFile(file, 'utf8').catch(() => '');
  if (text.trim() === String(process.pid)) await unlink(file).catch(() => {});
}
