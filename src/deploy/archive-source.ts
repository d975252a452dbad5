/**
 * A `.tar.gz` source: copied privately, listed and checked (every entry and link stays inside the
 * release, within the limits) before the system tar extracts it.
 */

import { constants } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { posix } from 'node:path';
import { BerthError, errorMessage } from '../lib/errors.ts';
import { copyBytes, releaseError, ReleaseBudget, verifyTree, type ReleaseLimits } from './release-tree.ts';
import { run, splitLines, type Output } from './tool-run.ts';

export async function extractArchive(path: string, dest: string, limits: ReleaseLimits, scratch: string): Promise<void> {
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
export async function extractArchiveCopy(path: string, copy: string, dest: string, limits: ReleaseLimits): Promise<void> {
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
