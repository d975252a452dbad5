/**
 * Deploy sources: where a release's files come from. A source is a directory (copied), a `.tar.gz`
 * (listed, checked, then extracted with the system tar) or a git repository with an optional `#ref`
 * (exported with `git archive`, so the release holds a clean tree and no `.git`).
 *
 * Archive and git content is treated as untrusted: no entry may land or point outside the release dir.
 * A local directory is the operator's own tree, so its symlinks are copied as they are.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { cp, lstat, mkdir, readdir, readlink, realpath, rm, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, posix, relative, resolve, sep } from 'node:path';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';

export type Source =
  | { kind: 'directory'; path: string }
  | { kind: 'archive'; path: string }
  /** `local`: `url` is an absolute path to a repository on this machine, read in place. */
  | { kind: 'git'; url: string; ref: string; local: boolean };

export interface FetchOptions {
  /** Real paths never copied from a directory source (the state dir, when it lives inside the source). */
  exclude: string[];
  /** A path that must not exist, used for a temporary clone of a remote repository; removed afterwards. */
  scratch: string;
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
 * Classifies a source string. A `#` fragment, a URL, an scp-like address or a `.git` suffix means git
 * (the fragment is the ref; default HEAD); `.tar.gz`/`.tgz` means an archive; anything else is a
 * directory. Relative paths resolve against `cwd`. Throws BERTH_E_RELEASE for an empty source or a bad ref.
 */
export function parseSource(source: string, cwd: string = process.cwd()): Source {
  const text = source.trim();
  if (text === '') throw releaseError('the deploy source is empty');
  const hash = text.lastIndexOf('#');
  const isUrl = URL_RE.test(text) || SCP_RE.test(text);
  if (hash >= 0 || isUrl || /\.git\/?$/.test(text)) {
    const location = hash >= 0 ? text.slice(0, hash) : text;
    const ref = hash >= 0 && hash < text.length - 1 ? text.slice(hash + 1) : 'HEAD';
    if (location === '') throw releaseError(`git source "${text}" names no repository`);
    if (location.startsWith('-')) throw releaseError(`git source "${text}" must not start with "-"`);
    if (!REF_RE.test(ref)) throw releaseError(`git source "${text}" has a bad ref "${ref}"`);
    const remote = URL_RE.test(location) || SCP_RE.test(location);
    return remote ? { kind: 'git', url: location, ref, local: false } : { kind: 'git', url: resolve(cwd, location), ref, local: true };
  }
  if (ARCHIVE_RE.test(text)) return { kind: 'archive', path: resolve(cwd, text) };
  return { kind: 'directory', path: resolve(cwd, text) };
}

/**
 * Materialises a source into `dest`, which must not exist yet. Returns the git commit SHA for a git
 * source, else null. Throws BERTH_E_RELEASE naming the cause; the caller removes `dest` on failure.
 */
export async function fetchSource(source: Source, dest: string, opts: FetchOptions): Promise<{ revision: string | null }> {
  switch (source.kind) {
    case 'directory':
      await copyDirectory(source.path, dest, opts.exclude);
      return { revision: null };
    case 'archive':
      await extractArchive(source.path, dest);
      return { revision: null };
    case 'git':
      return { revision: await exportGit(source, dest, opts.scratch) };
  }
}

// ---- directory ------------------------------------------------------------------------------

async function copyDirectory(path: string, dest: string, exclude: string[]): Promise<void> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    throw releaseError(`source directory ${path} does not exist`, err);
  }
  if (!st.isDirectory()) throw releaseError(`source ${path} is not a directory, a .tar.gz archive or a git repository`);
  const root = await realpath(path);
  // A state dir inside the source is skipped; fs.cp also refuses to copy a directory into itself, so the
  // directories on the way down to it are walked here and everything else is handed to fs.cp.
  const avoid = exclude.filter((p) => isInside(root, p) && p !== root);
  try {
    await copyEntries(root, dest, avoid);
  } catch (err) {
    throw releaseError(`cannot copy source directory ${path}: ${errorMessage(err)}`, err);
  }
}

async function copyEntries(srcDir: string, destDir: string, avoid: string[]): Promise<void> {
  await mkdir(destDir, { recursive: true });
  for (const name of (await readdir(srcDir)).sort()) {
    const src = join(srcDir, name);
    if (!(await copyable(src)) || avoid.includes(src)) continue;
    const dest = join(destDir, name);
    if (avoid.some((p) => isInside(src, p))) await copyEntries(src, dest, avoid);
    else await cp(src, dest, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true, errorOnExist: true, force: false, filter: copyable });
  }
}

/** Skips `.git` anywhere, and sockets, FIFOs and devices, which are not release content. */
async function copyable(src: string): Promise<boolean> {
  if (basename(src) === '.git') return false;
  const st = await lstat(src);
  return st.isFile() || st.isDirectory() || st.isSymbolicLink();
}

// ---- .tar.gz --------------------------------------------------------------------------------

async function extractArchive(path: string, dest: string): Promise<void> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new Error('not a file');
  } catch (err) {
    throw releaseError(`source archive ${path} does not exist or is not a file`, err);
  }
  let names: Output;
  let verbose: Output;
  try {
    // The C locale keeps tar's " -> " and " link to " markers and its warnings untranslated.
    const env = { ...process.env, LC_ALL: 'C' };
    names = await run('tar -t', 'tar', ['-tzf', path], env);
    verbose = await run('tar -tv', 'tar', ['-tvzf', path], env);
  } catch (err) {
    throw releaseError(`source archive ${path} is not a readable .tar.gz: ${errorMessage(err)}`, err);
  }
  checkArchiveEntries(path, splitLines(names.stdout), splitLines(verbose.stdout));
  // GNU tar lists hard link targets already cleaned of leading "/" and "../", and says so on stderr;
  // that cleaning is the sign of a link that pointed out of the tree.
  const cleaned = /Removing leading `[^']*' from [a-z ]+/.exec(verbose.stderr);
  if (cleaned) throw releaseError(`source archive ${path}: an entry escapes the release dir (tar: ${cleaned[0]})`);
  await mkdir(dest, { recursive: true });
  try {
    await run('tar -x', 'tar', ['-xzf', path, '-C', dest, '--no-same-owner', '--no-same-permissions']);
  } catch (err) {
    throw releaseError(`cannot extract source archive ${path}: ${errorMessage(err)}`, err);
  }
  await verifyTree(dest, `archive ${path}`);
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

async function exportGit(source: Extract<Source, { kind: 'git' }>, dest: string, scratch: string): Promise<string> {
  const where = `${source.url}#${source.ref}`;
  let repo = source.url;
  // Never let git wander up from a local path into an enclosing repository (a checkout holding it).
  const env: NodeJS.ProcessEnv = { ...process.env, GIT_TERMINAL_PROMPT: '0', GIT_CEILING_DIRECTORIES: dirname(source.url) };
  try {
    if (source.local) {
      try {
        await stat(source.url);
      } catch (err) {
        throw releaseError(`git repository ${source.url} does not exist`, err);
      }
    } else {
      env.GIT_CEILING_DIRECTORIES = dirname(scratch);
      try {
        await run('git clone', 'git', ['-c', 'protocol.ext.allow=never', 'clone', '--bare', '--quiet', '--', source.url, scratch], env);
      } catch (err) {
        throw releaseError(`git clone of ${source.url} failed: ${errorMessage(err)}`, err);
      }
      repo = scratch;
    }
    let sha: string;
    try {
      sha = (await run('git rev-parse', 'git', ['-C', repo, 'rev-parse', '--verify', '--quiet', `${source.ref}^{commit}`], env)).stdout.trim();
    } catch (err) {
      // --quiet leaves stderr empty for an unknown ref; other failures (not a repository) say why.
      const why = errorMessage(err);
      throw releaseError(`git ref "${source.ref}" not found in ${source.url}${/exited with 1$/.test(why) ? '' : `: ${why}`}`, err);
    }
    await mkdir(dest, { recursive: true });
    try {
      await gitArchive(repo, sha, dest, env);
    } catch (err) {
      throw releaseError(`cannot export ${where}: ${errorMessage(err)}`, err);
    }
    await verifyTree(dest, `git ${where}`);
    return sha;
  } finally {
    if (!source.local) await rm(scratch, { recursive: true, force: true });
  }
}

/** `git archive <sha> | tar -x`: a clean tree, no `.git`, no checkout state to clean up. */
async function gitArchive(repo: string, sha: string, dest: string, env: NodeJS.ProcessEnv): Promise<void> {
  const git = spawn('git', ['-C', repo, 'archive', '--format=tar', sha], { stdio: ['ignore', 'pipe', 'pipe'], env });
  const tar = spawn('tar', ['-xf', '-', '-C', dest, '--no-same-owner', '--no-same-permissions'], { stdio: [git.stdout!, 'ignore', 'pipe'] });
  // Node keeps its own end of git's stdout open after handing it to tar; without this, git would not see
  // a closed pipe if tar died early.
  git.stdout!.destroy();
  await Promise.all([exited(git, 'git archive'), exited(tar, 'tar -x')]);
}

// ---- tree checks and hashing ----------------------------------------------------------------

/**
 * Walks an extracted tree and throws BERTH_E_RELEASE when a symlink resolves (physically, following
 * other links, even when dangling) outside it, or an entry is not a file, directory or symlink.
 */
export async function verifyTree(dir: string, what: string): Promise<void> {
  const root = await realpath(dir);
  const walk = async (abs: string): Promise<void> => {
    for (const entry of await readdir(abs, { withFileTypes: true })) {
      const p = join(abs, entry.name);
      if (entry.isDirectory()) await walk(p);
      else if (entry.isSymbolicLink()) {
        if ((await resolveInside(root, p)) === null) {
          throw releaseError(`${what}: symlink "${relative(root, p)}" -> "${await readlink(p)}" escapes the release dir`);
        }
      } else if (!entry.isFile()) throw releaseError(`${what}: "${relative(root, p)}" is not a file, directory or symlink`);
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

/** Runs a command without a shell; resolves with stdout, rejects naming the exit status and stderr's tail. */
interface Output {
  stdout: string;
  stderr: string;
}

/** Runs a command without a shell; resolves with its output, rejects naming the exit status and stderr's tail. */
async function run(label: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Output> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  const out: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  const stderr = await exited(child, label);
  return { stdout: Buffer.concat(out).toString('utf8'), stderr };
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
