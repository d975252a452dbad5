/**
 * Deploy sources: where a release's files come from. A source is a directory (copied), a `.tar.gz`
 * (listed, checked, then extracted with the system tar) or a git repository with an optional `#ref`
 * (cloned into a fresh scratch repository, then exported with `git archive`, so the release holds a
 * clean tree and no `.git`).
 *
 * Every source is untrusted content: no entry may land or point outside the release dir. A directory's
 * symlinks are copied as links, never followed, and one that resolves outside the release fails the
 * deploy naming it (a link to `/etc/...` or `../../x` would otherwise let the static server or berth's
 * own reads and writes escape the release).
 *
 * Git never runs with the source repository as its own repository: the only git process that opens it
 * is `upload-pack`, serving objects to `git clone --no-local`, and upload-pack runs nothing the
 * repository configures. Everything else runs in the fresh clone, made with an empty template (no
 * hooks), with hooks and fsmonitor off, and for a local repository with no system or global config at
 * all, so no filter, hook, fsmonitor, ssh command or credential helper of the source can execute.
 *
 * A release is limited in size and entries (`max_release_size`, `max_release_files`), checked from the
 * listing before an archive or git tree is written and while a directory is copied, then counted again
 * on disk before the build.
 */

import { constants, statSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, readlink, realpath, stat, symlink, utimes } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { BerthError, errorMessage } from '../lib/errors.ts';
import { redactUrl } from '../lib/redact.ts';
import { openContained } from '../lib/contained-file.ts';
import { extractArchive } from './archive-source.ts';
import { exportGit, type GitSource } from './git-source.ts';
import { copyBytes, DEFAULT_RELEASE_LIMITS, isInside, releaseError, ReleaseBudget, verifyTree, type ReleaseLimits } from './release-tree.ts';

export type Source =
  | { kind: 'directory'; path: string }
  | { kind: 'archive'; path: string }
  | GitSource;

export interface FetchOptions {
  /** Real paths never copied from a directory source (the state dir, when it lives inside the source). */
  exclude: string[];
  /** A path that must not exist, used for a temporary clone of a repository or copy of an archive; removed afterwards. */
  scratch: string;
  /** Default: DEFAULT_RELEASE_LIMITS. */
  limits?: ReleaseLimits;
}

const URL_RE = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;
/** `git@host:owner/repo.git`, the scp-like form git accepts. */
const SCP_RE = /^[^/\s:]+@[^/\s:]+:/;
const ARCHIVE_RE = /\.(?:tar\.gz|tgz)$/i;
/** Refs name branches, tags and SHAs; never an option, whitespace or control characters. */
const REF_RE = /^(?!-)[^\s\x00-\x1f\x7f]+$/;

/**
 * Classifies a source string. A path that exists on disk is a directory, or an archive when it is a
 * `.tar.gz`/`.tgz` file, whatever characters it holds (a `#` included). Otherwise a `#` fragment, a URL,
 * an scp-like address or a `.git` suffix means git (the fragment is the ref; default HEAD);
 * `.tar.gz`/`.tgz` means an archive; anything else is a directory. Relative paths resolve against
 * `cwd`. Throws BERTH_E_RELEASE for an empty source or a bad ref (naming the source redacted).
 */
export function parseSource(source: string, cwd: string = process.cwd()): Source {
  const text = source.trim();
  if (text === '') throw releaseError('the deploy source is empty');
  const isUrl = URL_RE.test(text) || SCP_RE.test(text);
  const hash = text.lastIndexOf('#');
  if (hash >= 0 && !isUrl) {
    const onDisk = existingKind(resolve(cwd, text));
    if (onDisk === 'directory') return { kind: 'directory', path: resolve(cwd, text) };
    if (onDisk === 'file') return ARCHIVE_RE.test(text) ? { kind: 'archive', path: resolve(cwd, text) } : { kind: 'directory', path: resolve(cwd, text) };
  }
  if (hash >= 0 || isUrl || /\.git\/?$/.test(text)) {
    const shown = redactUrl(text);
    const location = hash >= 0 ? text.slice(0, hash) : text;
    const ref = hash >= 0 && hash < text.length - 1 ? text.slice(hash + 1) : 'HEAD';
    if (location === '') throw releaseError(`git source "${shown}" names no repository`);
    if (location.startsWith('-')) throw releaseError(`git source "${shown}" must not start with "-"`);
    if (!REF_RE.test(ref)) throw releaseError(`git source "${shown}" has a bad ref "${ref}"`);
    const remote = URL_RE.test(location) || SCP_RE.test(location);
    return remote ? { kind: 'git', url: location, ref, local: false } : { kind: 'git', url: resolve(cwd, location), ref, local: true };
  }
  if (ARCHIVE_RE.test(text)) return { kind: 'archive', path: resolve(cwd, text) };
  return { kind: 'directory', path: resolve(cwd, text) };
}

function existingKind(path: string): 'directory' | 'file' | null {
  try {
    const st = statSync(path);
    return st.isDirectory() ? 'directory' : 'file';
  } catch {
    return null;
  }
}

/**
 * Materialises a source into `dest`, which must not exist yet. Returns the git commit SHA for a git
 * source, else null. Throws BERTH_E_RELEASE naming the cause (with any credentials in a git URL
 * redacted); the caller removes `dest` on failure.
 */
export async function fetchSource(source: Source, dest: string, opts: FetchOptions): Promise<{ revision: string | null }> {
  const limits = opts.limits ?? DEFAULT_RELEASE_LIMITS;
  switch (source.kind) {
    case 'directory':
      await copyDirectory(source.path, dest, opts.exclude, limits);
      return { revision: null };
    case 'archive':
      await extractArchive(source.path, dest, limits, opts.scratch);
      return { revision: null };
    case 'git':
      return { revision: await exportGit(source, dest, opts.scratch, limits) };
  }
}

// ---- directory ------------------------------------------------------------------------------

async function copyDirectory(path: string, dest: string, exclude: string[], limits: ReleaseLimits): Promise<void> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    throw releaseError(`source directory ${path} does not exist`, err);
  }
  if (!st.isDirectory()) throw releaseError(`source ${path} is not a directory, a .tar.gz archive or a git repository`);
  const root = await realpath(path);
  const what = `source directory ${path}`;
  const avoid = exclude.filter((p) => isInside(root, p) && p !== root);
  try {
    await copyEntries(root, dest, avoid, new ReleaseBudget(limits, what), root, what);
  } catch (err) {
    if (err instanceof BerthError) throw err;
    throw releaseError(`cannot copy source directory ${path}: ${errorMessage(err)}`, err);
  }
  // Links are copied as they are, never followed; one that leads out of the release is refused here.
  await verifyTree(dest, what, limits);
}

/**
 * Mode bits a copy keeps. Never set-user-ID or set-group-ID: berth may copy as root, so the copy of a
 * file its owner made setuid would be a setuid-root program (the sticky bit of a directory is kept).
 */
const FILE_MODE_BITS = 0o777;
const DIR_MODE_BITS = 0o1777;

/**
 * Copies a tree: files with their permission bits and times, directories, and symlinks as links (not
 * followed). Skips `.git` anywhere, the `avoid` paths, and sockets, FIFOs and devices, which are not
 * release content. Charges every entry to `budget` before writing it. `root` is the source's real path.
 */
async function copyEntries(srcDir: string, destDir: string, avoid: string[], budget: ReleaseBudget, root: string, what: string): Promise<void> {
  const dirStats = await lstat(srcDir);
  await mkdir(destDir);
  for (const name of (await readdir(srcDir)).sort()) {
    if (name === '.git') continue;
    const src = join(srcDir, name);
    if (avoid.includes(src)) continue;
    const dest = join(destDir, name);
    const st = await lstat(src);
    if (st.isDirectory()) {
      budget.add(0);
      await copyEntries(src, dest, avoid, budget, root, what);
    } else if (st.isFile()) {
      await copyFileInside(src, dest, root, budget, what);
    } else if (st.isSymbolicLink()) {
      budget.add(0);
      await symlink(await readlink(src), dest);
    }
  }
  await chmod(destDir, dirStats.mode & DIR_MODE_BITS);
  await utimes(destDir, dirStats.atime, dirStats.mtime);
}

/**
 * Copies one regular file, judged on the file actually opened rather than on the lstat that listed it:
 * the source's owner may swap the file (or a directory on its way) for a symlink in between, and berth,
 * possibly root, must not copy /etc/shadow into a release. The file opened must lie inside the source
 * (src/lib/contained-file.ts) and be a regular file; its size is taken from the open descriptor and no
 * more than that is copied, so a file growing meanwhile cannot pass the release limits either.
 */
async function copyFileInside(src: string, dest: string, root: string, budget: ReleaseBudget, what: string): Promise<void> {
  const found = await openContained(src, [root]);
  if (found.kind !== 'file') {
    throw releaseError(`${what}: "${relative(root, src)}" changed while it was copied, or cannot be read (it is no longer a readable regular file inside the source)`);
  }
  const { handle, stats } = found;
  try {
    budget.add(stats.size);
    const mode = stats.mode & FILE_MODE_BITS;
    // O_EXCL: never write through something already at `dest`.
    const out = await open(dest, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
    try {
      await copyBytes(handle, out, stats.size);
      // The umask may have narrowed the mode given to open().
      await out.chmod(mode);
    } finally {
      await out.close();
    }
    await utimes(dest, stats.atime, stats.mtime);
  } finally {
    await handle.close();
  }
}
