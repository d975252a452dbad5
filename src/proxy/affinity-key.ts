/**
 * The key that signs affinity cookies (affinity.ts): 32 random bytes in `<state_dir>/affinity.key`,
 * mode 0600, made by whichever proxy thread needs it first and read by every other one. So a cookie one
 * thread set is good on every thread (`proxy.workers`), and after a restart of the gateway.
 *
 * Not in the state store: a cookie names an instance of this gateway's own generations, so a fleet node
 * could not route another node's cookie anyway; a key of its own per state dir loses nothing.
 *
 * Read and written synchronously, once per thread, when the first table with a cookie route is set:
 * never per request.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, fsyncSync, linkSync, mkdirSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { BerthError, ErrorCodes } from '../lib/errors.ts';

/** The key file's name in the state dir. */
export const AFFINITY_KEY_FILE = 'affinity.key';
/** An HMAC-SHA256 key of the hash's own size. */
export const AFFINITY_KEY_BYTES = 32;

/**
 * The state dir's key, made (atomically, 0600) when there is none yet. Throws BERTH_E_INTERNAL naming
 * the file when it cannot be read or made, or does not hold exactly AFFINITY_KEY_BYTES bytes (it is
 * then left as it is, for the operator to look at).
 */
export function loadAffinityKey(stateDir: string): Buffer {
  const file = join(stateDir, AFFINITY_KEY_FILE);
  try {
    return readKey(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw problem(file, err);
  }
  try {
    mkdirSync(stateDir, { recursive: true, mode: 0o711 });
    // Written whole under a name of its own, then linked into place: link() fails when another thread
    // or process got there first, and then theirs is the key. Nobody ever reads half a key.
    const tmp = join(stateDir, `.${AFFINITY_KEY_FILE}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      writeSync(fd, randomBytes(AFFINITY_KEY_BYTES));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmp, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    } finally {
      unlinkSync(tmp);
    }
    return readKey(file);
  } catch (err) {
    throw problem(file, err);
  }
}

/** The key in `file`: a regular file (never through a symlink) of exactly AFFINITY_KEY_BYTES bytes. */
function readKey(file: string): Buffer {
  const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile() || stat.size !== AFFINITY_KEY_BYTES) {
      throw new Error(`expected a file of ${AFFINITY_KEY_BYTES} bytes, found ${stat.isFile() ? `${stat.size} bytes` : 'something else'}`);
    }
    const key = Buffer.alloc(AFFINITY_KEY_BYTES);
    if (readSync(fd, key, 0, AFFINITY_KEY_BYTES, 0) !== AFFINITY_KEY_BYTES) throw new Error('the file changed while it was read');
    return key;
  } finally {
    closeSync(fd);
  }
}

function problem(file: string, err: unknown): BerthError {
  if (err instanceof BerthError) return err;
  return new BerthError(ErrorCodes.internal, `affinity key ${file}: ${(err as Error).message}`, { cause: err });
}
