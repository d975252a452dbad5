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
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants, createReadStream, statSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, readlink, realpath, rm, stat, symlink, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, isAbsolute, join, posix, relative, resolve, sep } from 'node:path';
import { DEFAULT_MAX_RELEASE_BYTES, DEFAULT_MAX_RELEASE_FILES } from '../config/schema.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import { redactText, redactUrl } from '../lib/redact.ts';
import { openContained } from '../lib/contained-file.ts';

export type Source =
  | { kind: 'directory'; path: string }
  | { kind: 'archive'; path: string }
  /** `local`: `url` is an absolute path to a repository on this machine. */
  | { kind: 'git'; url: string; ref: string; local: boolean };

/** How much a release may hold (`max_release_size`, `max_release_files`). */
export interface ReleaseLimits {
  maxBytes: number;
  /** Files, directories and links, each counting one. */
  maxFiles: number;
}

export const DEFAULT_RELEASE_LIMITS: ReleaseLimits = { maxBytes: DEFAULT_MAX_RELEASE_BYTES, maxFiles: DEFAULT_MAX_RELEASE_FILES };

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
/** More hops than this while resolving a symlink is a loop. */
const MAX_LINK_HOPS = 40;

function releaseError(message: string, cause?: unknown): BerthError {
  return new BerthError(ErrorCodes.release, message, cause === undefined ? undefined : { cause });
}

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

// ---- limits ---------------------------------------------------------------------------------

/** Counts what goes into a release and throws, naming the limit, as soon as one is passed. */
class ReleaseBudget {
  bytes = 0;
  files = 0;
  readonly #limits: ReleaseLimits;
  readonly #what: string;

  constructor(limits: ReleaseLimits, what: string) {
    this.#limits = limits;
    this.#what = what;
  }

  /** One entry (file, directory or link) of `bytes` bytes. */
  add(bytes: number): void {
    this.files++;
    this.bytes += bytes;
    if (this.files > this.#limits.maxFiles) {
      throw releaseError(`${this.#what} holds more than ${this.#limits.maxFiles} files and directories: over the limit max_release_files (${this.#limits.maxFiles})`);
    }
    if (this.bytes > this.#limits.maxBytes) {
      throw releaseError(`${this.#what} holds more than ${formatBytes(this.#limits.maxBytes)}: over the limit max_release_size (${this.#limits.maxBytes} bytes)`);
    }
  }
}

function formatBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1 && Number.isInteger(v / 1024)) {
    v /= 1024;
    u++;
  }
  return `${v} ${units[u]}`;
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
/** Bytes read and written at a time when a file is copied. */
const COPY_CHUNK = 1024 * 1024;

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

/** Copies the first `size` bytes of `from` (fewer if it shrank meanwhile) to `to`. */
async function copyBytes(from: FileHandle, to: FileHandle, size: number): Promise<void> {
  if (size === 0) return;
  const buf = Buffer.allocUnsafe(Math.min(size, COPY_CHUNK));
  let pos = 0;
  while (pos < size) {
    const { bytesRead } = await from.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) return;
    let written = 0;
    while (written < bytesRead) written += (await to.write(buf, written, bytesRead - written)).bytesWritten;
    pos += bytesRead;
  }
}

// ---- .tar.gz --------------------------------------------------------------------------------

async function extractArchive(path: string, dest: string, limits: ReleaseLimits, scratch: string): Promise<void> {
  // Listed, checked and extracted from a private copy: the archive's owner could otherwise replace it
  // between the listing that was checked and the extraction.
  const copy = `${scratch}.tar.gz`;
  // No archive of a release within the limits is larger than this (gzip adds well under 1%, tar 512
  // bytes of header and up to 511 of padding per entry): a larger one is refused before it is copied.
  const maxArchive = Math.ceil(limits.maxBytes * 1.01) + 1024 * limits.maxFiles + 1024 * 1024;
  try {
    await snapshotFile(path, copy, maxArchive);
  } catch (err) {
    await rm(copy, { force: true });
    if (err instanceof BerthError) throw releaseError(`source archive ${path} ${err.message}: over the limit max_release_size (${limits.maxBytes} bytes)`);
    throw releaseError(`source archive ${path} does not exist or is not a file`, err);
  }
  try {
    await extractArchiveCopy(path, copy, dest, limits);
  } finally {
    await rm(copy, { force: true });
  }
}

/**
 * Copies the regular file `from` to `to` (created, 0600); O_NONBLOCK so a FIFO swapped in cannot block.
 * Throws a BerthError saying how large it is when it is over `maxBytes`.
 */
async function snapshotFile(from: string, to: string, maxBytes: number): Promise<void> {
  const src = await open(from, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = await src.stat();
    if (!st.isFile()) throw new Error('not a file');
    if (st.size > maxBytes) throw releaseError(`is ${st.size} bytes, larger than the archive of any release within the limits`);
    const out = await open(to, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      await copyBytes(src, out, st.size);
    } finally {
      await out.close();
    }
  } finally {
    await src.close();
  }
}

/** Lists and checks `copy` (a private copy of the archive at `path`, named in messages), then extracts it. */
async function extractArchiveCopy(path: string, copy: string, dest: string, limits: ReleaseLimits): Promise<void> {
  const what = `source archive ${path}`;
  // The C locale keeps tar's " -> " and " link to " markers and its warnings untranslated.
  const env = { ...process.env, LC_ALL: 'C' };
  let verbose: Output;
  let names: Output;
  try {
    // The verbose listing comes first and is read as it streams: each entry is charged to the budget,
    // so an archive bomb is stopped at its first oversized header, before anything is written.
    const budget = new ReleaseBudget(limits, what);
    verbose = await run('tar -t', 'tar', ['-tvzf', copy, '--numeric-owner'], env, (line) => budget.add(listedSize(path, line)));
    names = await run('tar -t', 'tar', ['-tzf', copy], env);
  } catch (err) {
    if (err instanceof BerthError) throw err;
    throw releaseError(`source archive ${path} is not a readable .tar.gz: ${errorMessage(err)}`, err);
  }
  checkArchiveEntries(path, splitLines(names.stdout), splitLines(verbose.stdout));
  // GNU tar lists hard link targets already cleaned of leading "/" and "../", and says so on stderr;
  // that cleaning is the sign of a link that pointed out of the tree.
  const cleaned = /Removing leading `[^']*' from [a-z ]+/.exec(verbose.stderr);
  if (cleaned) throw releaseError(`source archive ${path}: an entry escapes the release dir (tar: ${cleaned[0]})`);
  await mkdir(dest, { recursive: true });
  try {
    await run('tar -x', 'tar', ['-xzf', copy, '-C', dest, '--no-same-owner', '--no-same-permissions']);
  } catch (err) {
    throw releaseError(`cannot extract source archive ${path}: ${errorMessage(err)}`, err);
  }
  await verifyTree(dest, what, limits);
}

/** The size field of a `tar -tv --numeric-owner` line: `<mode> <uid>/<gid> <size> <date> <time> <name>`. */
function listedSize(path: string, line: string): number {
  const m = /^\S+\s+\d+\/\d+\s+(\d+)\s/.exec(line);
  // Device entries list "major,minor" instead of a size; they are refused later by type.
  if (m) return Number(m[1]);
  if (/^[bc]/.test(line)) return 0;
  throw releaseError(`cannot parse the listing of source archive ${path} at "${line}"`);
}

/**
 * Rejects, before anything is written, entries that would land outside the release: absolute names,
 * `..` components, entries below a symlink the archive itself made, symlinks whose targets leave the
 * release, hard links to outside names, and anything but files, directories and links. `names` comes
 * from `tar -t` and `verbose` from `tar -tv`, line for line; the plain name finds the link target in
 * the verbose line without guessing where the name ends.
 */
function checkArchiveEntries(path: string, names: string[], verbose: string[]): void {
  if (names.length !== verbose.length) throw releaseError(`cannot list source archive ${path}: tar listings disagree`);
  const links = new Set<string>();
  for (let i = 0; i < names.length; i++) {
    const raw = names[i];
    const line = verbose[i];
    const escapes = (why: string) => releaseError(`source archive ${path}: entry "${raw}" escapes the release dir (${why})`);
    if (raw.startsWith('/')) throw escapes('absolute path');
    const name = normaliseEntry(raw);
    if (name.split('/').includes('..')) throw escapes('".." component');
    for (let cut = name.indexOf('/'); cut >= 0; cut = name.indexOf('/', cut + 1)) {
      if (links.has(name.slice(0, cut))) throw escapes(`goes through the symlink "${name.slice(0, cut)}"`);
    }
    const type = line[0];
    if (type === 'l') {
      const target = linkTarget(path, line, raw, ' -> ');
      if (target.startsWith('/')) throw escapes(`symlink to absolute path ${target}`);
      if (leavesRoot(posix.join(posix.dirname(name), target))) throw escapes(`symlink to ${target}`);
      links.add(name);
    } else if (type === 'h') {
      const target = linkTarget(path, line, raw, ' link to ');
      if (target.startsWith('/') || normaliseEntry(target).split('/').includes('..')) throw escapes(`hard link to ${target}`);
    } else if (type !== '-' && type !== 'd') {
      throw releaseError(`source archive ${path}: entry "${raw}" has an unsupported type "${type}" (only files, directories and links)`);
    }
  }
}

function linkTarget(path: string, line: string, name: string, marker: string): string {
  const needle = ` ${name}${marker}`;
  const at = line.indexOf(needle);
  if (at < 0) throw releaseError(`cannot parse the listing of source archive ${path} at "${line}"`);
  return line.slice(at + needle.length);
}

/** `./a/b/` → `a/b`. */
function normaliseEntry(name: string): string {
  let n = name;
  while (n.startsWith('./')) n = n.slice(2);
  return n.replace(/\/+$/, '') || '.';
}

function leavesRoot(relPath: string): boolean {
  const n = posix.normalize(relPath);
  return n === '..' || n.startsWith('../');
}

// ---- git ------------------------------------------------------------------------------------

/** Environment variables a git clone of a remote may need from the gateway's: ssh agent, proxies. */
const GIT_PASS_ENV = ['PATH', 'HOME', 'USER', 'LOGNAME', 'TMPDIR', 'SSH_AUTH_SOCK', 'http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'ALL_PROXY', 'all_proxy'];

/**
 * Config given on every git command line. Hooks, fsmonitor and submodule recursion are off whatever a
 * config file says, and only the transports named here may be used (no `ext::`, no `fd::`).
 */
const GIT_SAFE_CONFIG = [
  'core.hooksPath=/dev/null',
  'core.fsmonitor=false',
  'core.untrackedCache=false',
  'submodule.recurse=false',
  'protocol.allow=never',
  'protocol.file.allow=always',
  'protocol.https.allow=always',
  'protocol.http.allow=always',
  'protocol.ssh.allow=always',
  'protocol.git.allow=always',
].flatMap((c) => ['-c', c]);

/**
 * A clean environment for git. For a repository on this machine (a path or `file://`): no system or
 * global config at all, only a config file that marks every directory safe, so `upload-pack` serves a
 * repository owned by another user (it runs nothing that repository configures). For a remote: the
 * operator's own git config (credential helpers, `insteadOf`), which is not the source's.
 */
function gitEnv(onThisMachine: boolean, ceiling: string, safeConfig: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const key of GIT_PASS_ENV) if (process.env[key] !== undefined) env[key] = process.env[key];
  env.PATH ??= '/usr/local/bin:/usr/bin:/bin';
  env.LC_ALL = 'C';
  env.GIT_TERMINAL_PROMPT = '0';
  env.GIT_NO_REPLACE_OBJECTS = '1';
  // Never let git wander up from a path into an enclosing repository (a checkout holding it).
  env.GIT_CEILING_DIRECTORIES = ceiling;
  if (onThisMachine) {
    env.GIT_CONFIG_NOSYSTEM = '1';
    env.GIT_CONFIG_GLOBAL = safeConfig;
  }
  return env;
}

/** Whether a local path looks like a repository (bare, or a work tree with `.git`), without running git in it. */
async function looksLikeRepository(path: string): Promise<boolean> {
  for (const p of [join(path, '.git'), join(path, 'HEAD')]) {
    try {
      await lstat(p);
      return true;
    } catch {
      // Not this shape: try the next.
    }
  }
  return false;
}

async function exportGit(source: Extract<Source, { kind: 'git' }>, dest: string, scratch: string, limits: ReleaseLimits): Promise<string> {
  const shown = redactUrl(source.url);
  const where = `${shown}#${source.ref}`;
  const onThisMachine = source.local || /^file:\/\//i.test(source.url);
  const safeConfig = `${scratch}.gitconfig`;
  const env = gitEnv(onThisMachine, dirname(scratch), safeConfig);
  // What git prints may quote the URL as given, credentials included: scrubbed before it is recorded.
  const scrub = (err: unknown) => redactText(errorMessage(err), [source.url]);
  try {
    if (source.local) {
      try {
        await stat(source.url);
      } catch (err) {
        throw releaseError(`git repository ${shown} does not exist`, err);
      }
      if (!(await looksLikeRepository(source.url))) throw releaseError(`git ref "${source.ref}" not found in ${shown}: ${shown} is not a git repository`);
    }
    if (onThisMachine) await writeFile(safeConfig, '[safe]\n\tdirectory = *\n', { mode: 0o600 });
    try {
      // A fresh bare clone with an empty template (no hooks). --no-local: the source is read through
      // upload-pack, never opened as this git's own repository. A repository on this machine is
      // mirrored (every ref, as when it was read in place); a remote gives its branches and tags.
      const mode = onThisMachine ? '--mirror' : '--bare';
      await run('git clone', 'git', [...GIT_SAFE_CONFIG, 'clone', mode, '--no-local', '--template=', '--quiet', '--', source.url, scratch], env);
    } catch (err) {
      throw releaseError(`git clone of ${shown} failed: ${scrub(err)}`);
    }
    const git = [...GIT_SAFE_CONFIG, `--git-dir=${scratch}`];
    let sha: string;
    try {
      sha = (await run('git rev-parse', 'git', [...git, 'rev-parse', '--verify', '--quiet', `${source.ref}^{commit}`], env)).stdout.trim();
    } catch (err) {
      // --quiet leaves stderr empty for an unknown ref; other failures say why.
      const why = scrub(err);
      throw releaseError(`git ref "${source.ref}" not found in ${shown}${/exited with 1$/.test(why) ? '' : `: ${why}`}`);
    }
    // The tree's size and entry count, from git's own listing, before anything is written.
    const budget = new ReleaseBudget(limits, `git ${where}`);
    try {
      await run('git ls-tree', 'git', [...git, 'ls-tree', '-r', '-t', '-l', '--full-tree', sha], env, (line) => budget.add(treeEntrySize(line)));
    } catch (err) {
      if (err instanceof BerthError) throw err;
      throw releaseError(`cannot list ${where}: ${scrub(err)}`);
    }
    await mkdir(dest, { recursive: true });
    try {
      await gitArchive(git, sha, dest, env);
    } catch (err) {
      throw releaseError(`cannot export ${where}: ${scrub(err)}`);
    }
    await verifyTree(dest, `git ${where}`, limits);
    return sha;
  } finally {
    await rm(scratch, { recursive: true, force: true });
    await rm(safeConfig, { force: true });
  }
}

/** `<mode> <type> <object> <size>\t<path>` from `git ls-tree -l`: the size of a blob, 0 for trees and submodules. */
function treeEntrySize(line: string): number {
  const m = /^\d+ \w+ [0-9a-f]+ +(\d+|-)\t/.exec(line);
  return m && m[1] !== '-' ? Number(m[1]) : 0;
}

/** `git archive <sha> | tar -x`: a clean tree, no `.git`, no checkout state to clean up. */
async function gitArchive(git: string[], sha: string, dest: string, env: NodeJS.ProcessEnv): Promise<void> {
  const archive = spawn('git', [...git, 'archive', '--format=tar', sha], { stdio: ['ignore', 'pipe', 'pipe'], env });
  const tar = spawn('tar', ['-xf', '-', '-C', dest, '--no-same-owner', '--no-same-permissions'], { stdio: [archive.stdout!, 'ignore', 'pipe'] });
  // Node keeps its own end of git's stdout open after handing it to tar; without this, git would not see
  // a closed pipe if tar died early.
  archive.stdout!.destroy();
  await Promise.all([exited(archive, 'git archive'), exited(tar, 'tar -x')]);
}

// ---- tree checks and hashing ----------------------------------------------------------------

/**
 * Walks a prepared tree and throws BERTH_E_RELEASE when a symlink resolves (physically, following
 * other links, even when dangling) outside it, or an entry is not a file, directory or symlink. With
 * `limits`, also counts entries and bytes as they are on disk and throws naming the limit passed.
 */
export async function verifyTree(dir: string, what: string, limits?: ReleaseLimits): Promise<void> {
  const root = await realpath(dir);
  const budget = limits ? new ReleaseBudget(limits, what) : null;
  const walk = async (abs: string): Promise<void> => {
    for (const entry of await readdir(abs, { withFileTypes: true })) {
      const p = join(abs, entry.name);
      if (entry.isDirectory()) {
        budget?.add(0);
        await walk(p);
      } else if (entry.isSymbolicLink()) {
        budget?.add(0);
        if ((await resolveInside(root, p)) === null) {
          throw releaseError(`${what}: symlink "${relative(root, p)}" -> "${await readlink(p)}" escapes the release dir`);
        }
      } else if (entry.isFile()) {
        budget?.add(budget ? (await lstat(p)).size : 0);
      } else throw releaseError(`${what}: "${relative(root, p)}" is not a file, directory or symlink`);
    }
  };
  await walk(root);
}

/**
 * Resolves `path` (inside the real directory `root`) component by component the way the kernel would,
 * following symlinks, and returns the result, or null when it leaves `root`, goes through an absolute
 * link, or loops. Components that do not exist are taken literally, so a dangling link is judged by
 * where it would point.
 */
async function resolveInside(root: string, path: string): Promise<string | null> {
  const stack: string[] = [];
  const pending = relative(root, path).split(sep).reverse();
  let hops = 0;
  while (pending.length > 0) {
    const part = pending.pop()!;
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (stack.length === 0) return null;
      stack.pop();
      continue;
    }
    const abs = join(root, ...stack, part);
    let isLink = false;
    try {
      isLink = (await lstat(abs)).isSymbolicLink();
    } catch {
      // Missing: nothing to follow.
    }
    if (!isLink) {
      stack.push(part);
      continue;
    }
    if (++hops > MAX_LINK_HOPS) return null;
    const target = await readlink(abs);
    if (isAbsolute(target)) return null;
    for (const t of target.split('/').reverse()) pending.push(t);
  }
  return join(root, ...stack);
}

/**
 * A sha256 over the tree's content: each entry's type, relative path, and content hash (files, with the
 * executable bit) or target (symlinks), in sorted order. A top-level REVISION file is left out, since it
 * is what this hash gets written to.
 */
export async function treeHash(dir: string): Promise<string> {
  const root = await realpath(dir);
  const hash = createHash('sha256');
  const walk = async (abs: string, rel: string): Promise<void> => {
    const names = (await readdir(abs)).sort();
    for (const name of names) {
      const r = rel === '' ? name : `${rel}/${name}`;
      if (r === 'REVISION') continue;
      const p = join(abs, name);
      const st = await lstat(p);
      if (st.isDirectory()) {
        hash.update(`d\0${r}\0`);
        await walk(p, r);
      } else if (st.isSymbolicLink()) {
        hash.update(`l\0${r}\0${await readlink(p)}\0`);
      } else if (st.isFile()) {
        hash.update(`f${st.mode & 0o111 ? 'x' : ''}\0${r}\0${await fileHash(p)}\0`);
      }
    }
  };
  await walk(root, '');
  return hash.digest('hex');
}

async function fileHash(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

// ---- helpers --------------------------------------------------------------------------------

function isInside(dir: string, path: string): boolean {
  const r = relative(dir, path);
  return r === '' || (r !== '..' && !r.startsWith(`..${sep}`) && !isAbsolute(r));
}

function splitLines(text: string): string[] {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

interface Output {
  stdout: string;
  stderr: string;
}

/**
 * Runs a command without a shell; resolves with its output, rejects naming the exit status and
 * stderr's tail. `onLine` sees each stdout line as it arrives; when it throws, the command is killed
 * and the call rejects with that error (a listing stopped at the first entry over a limit).
 */
async function run(label: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, onLine?: (line: string) => void): Promise<Output> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  const out: Buffer[] = [];
  let stopped: unknown = null;
  let partial = '';
  child.stdout!.on('data', (c: Buffer) => {
    out.push(c);
    if (!onLine || stopped !== null) return;
    partial += c.toString('utf8');
    let nl: number;
    try {
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        onLine(line);
      }
    } catch (err) {
      stopped = err;
      child.kill('SIGKILL');
    }
  });
  try {
    const stderr = await exited(child, label);
    if (stopped !== null) throw stopped;
    if (onLine && partial !== '') onLine(partial);
    return { stdout: Buffer.concat(out).toString('utf8'), stderr };
  } catch (err) {
    throw stopped ?? err;
  }
}

/** Waits for a child to exit and resolves with its stderr; rejects when it could not start or exited non-zero. */
function exited(child: ChildProcess, label: string): Promise<string> {
  const err: Buffer[] = [];
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  return new Promise((resolvePromise, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      reject(e.code === 'ENOENT' ? new Error(`${label.split(' ')[0]} is not installed (not found on PATH)`, { cause: e }) : e);
    });
    child.once('close', (code, signal) => {
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) return resolvePromise(stderr);
      const tail = stderr.trim().split('\n').slice(-5).join('\n');
      reject(new Error(`${label} exited with ${signal ?? code}${tail ? `: ${tail}` : ''}`));
    });
  });
}
