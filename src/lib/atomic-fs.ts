import { open, rename, symlink, unlink, mkdir } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';
import { randomBytes } from 'node:crypto';

function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/** Writes a file atomically: write a temp file beside it, fsync, rename over the target. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempNameFor(path);
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
}

/**
 * Points `linkPath` at `target` atomically: a temp symlink renamed over the old one, so a reader sees
 * either the old target or the new one and never a missing link (Capistrano's `ln -sfn` is not atomic).
 */
export async function symlinkAtomic(target: string, linkPath: string): Promise<void> {
  const tmp = tempNameFor(linkPath);
  await symlink(target, tmp);
  try {
    await rename(tmp, linkPath);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
}
