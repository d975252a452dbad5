/**
 * One app's releases on disk: `<stateDir>/apps/<app>/releases/<id>` (immutable once prepared), the
 * `current` symlink beside `releases/`, and `shared/` entries linked into every release. Release rows in
 * the state store follow what happens here.
 */
import { timeSortedId } from '../lib/ids.ts';
import { lstat, mkdir, readdir, realpath, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, posix, relative } from 'node:path';
import { DEFAULT_MAX_RELEASE_BYTES, DEFAULT_MAX_RELEASE_FILES, type AppConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import { symlinkAtomic } from '../lib/atomic-fs.ts';
import { redactText } from '../lib/redact.ts';
import type { ReleaseState, Store } from '../store/store.ts';
import { fetchSource, parseSource } from './sources.ts';
import { treeHash } from './release-tree.ts';
import { removeManifest } from '../flush/manifest.ts';

/** `YYYYMMDDHHMMSS-<6 hex>`, UTC, so ids sort by time. */
export const RELEASE_ID_RE = /^\d{14}-[0-9a-f]{6}$/;
/** Written into every release: the git SHA, else the sha256 content hash of the tree. */
export const REVISION_FILE = 'REVISION';

/** Release states that do not count towards `keep_releases`. */
const NOT_KEPT: ReadonlySet<ReleaseState> = new Set<ReleaseState>(['failed', 'pruned']);

export interface PreparedRelease {
  id: string;
  /** Real path of the release directory. */
  dir: string;
  revision: string;
  /** The source as recorded: an absolute path, or the git URL/path with its `#ref`. */
  source: string;
}

export interface ReleaseStoreOptions {
  stateDir: string;
  app: AppConfig;
  store: Store;
  logger: Logger;
}

export class ReleaseStore {
  #stateDir: string;
  #app: AppConfig;
  #store: Store;
  #log: Logger;
  #appDir: string;
  #releasesDir: string;
  #currentLink: string;

  constructor(opts: ReleaseStoreOptions) {
    this.#stateDir = opts.stateDir;
    this.#app = opts.app;
    this.#store = opts.store;
    this.#log = opts.logger.child({ app: opts.app.name });
    this.#appDir = join(opts.stateDir, 'apps', opts.app.name);
    this.#releasesDir = join(this.#appDir, 'releases');
    this.#currentLink = join(this.#appDir, 'current');
  }

  /** `<stateDir>/apps/<app>` */
  get appDir(): string {
    return this.#appDir;
  }

  /** `<appDir>/releases` */
  get releasesDir(): string {
    return this.#releasesDir;
  }

  /** `<appDir>/current`, a symlink to `releases/<id>`. */
  get currentLink(): string {
    return this.#currentLink;
  }

  /** `<appDir>/shared`, where the `shared` entries live. */
  get sharedDir(): string {
    return join(this.#appDir, 'shared');
  }

  /** A new id for a release made at `now`: `YYYYMMDDHHMMSS-<6 hex>` in UTC. */
  newReleaseId(now: Date = new Date()): string {
    return timeSortedId('', now);
  }

  /**
   * Step 1: makes `releases/<id>` from a source (a directory is copied, a .tar.gz extracted, a git
   * `<url-or-path>#<ref>` exported), writes REVISION (the git SHA, else a sha256 content hash of the
   * tree), and records the release in the store as 'building'. The tree is built under a dot-name and
   * renamed into place when complete, so `releases/<id>` never exists half-made. Throws BERTH_E_RELEASE
   * naming the cause (missing source, bad archive, entry escaping the release dir, git failure) and
   * removes what it made.
   *
   * `fixed`: a fleet node making a release another node made (fleet/convergence.ts). The release gets
   * that id, its source must give that revision (else BERTH_E_RELEASE says both), and nothing is
   * recorded: the release's row is the fleet's, written by the node that made it first.
   */
  async prepare(source: string, fixed?: { id: string; revision: string | null }): Promise<PreparedRelease> {
    const parsed = parseSource(source);
    // What is logged and stored: credentials in a git URL never are (src/lib/redact.ts).
    const recorded = redactText(parsed.kind === 'git' ? (parsed.local ? `${parsed.url}#${parsed.ref}` : source.trim()) : parsed.path);
    const now = new Date();
    if (fixed && !RELEASE_ID_RE.test(fixed.id)) throw new BerthError(ErrorCodes.release, `"${fixed.id}" is not a release id`);
    const id = fixed?.id ?? this.newReleaseId(now);
    const final = join(this.#releasesDir, id);
    const staging = join(this.#releasesDir, `.${id}.partial`);
    const started = Date.now();
    this.#log.info({ release: id, source: recorded }, 'preparing release');
    let revision: string;
    try {
      await mkdir(this.#releasesDir, { recursive: true });
      const fetched = await fetchSource(parsed, staging, {
        exclude: [await realpath(this.#stateDir)],
        scratch: join(this.#releasesDir, `.${id}.clone`),
        limits: {
          // Apps built by hand (tests, tools) may leave the limits out: the defaults apply.
          maxBytes: this.#app.maxReleaseBytes ?? DEFAULT_MAX_RELEASE_BYTES,
          maxFiles: this.#app.maxReleaseFiles ?? DEFAULT_MAX_RELEASE_FILES,
        },
      });
      revision = fetched.revision ?? (await treeHash(staging));
      if (fixed?.revision && fixed.revision !== revision) {
        throw new BerthError(ErrorCodes.release, `source ${recorded} gives revision ${revision} here, but release ${id} of the fleet is revision ${fixed.revision}: deploy a tag or commit rather than a branch that moves, and keep a shared source unchanged while the fleet converges`);
      }
      await writeRevision(staging, revision);
      await rename(staging, final);
    } catch (err) {
      await rm(staging, { recursive: true, force: true });
      const failure = redactError(asReleaseError(`cannot prepare a release from ${recorded}`, err), source);
      this.#log.warn({ release: id, source: recorded, err: failure.message }, 'release not prepared');
      throw failure;
    }
    let dir: string;
    try {
      dir = await realpath(final);
      if (!fixed) await this.#store.putRelease({ app: this.#app.name, id, createdAt: now.toISOString(), state: 'building', source: recorded, revision });
    } catch (err) {
      await rm(final, { recursive: true, force: true });
      throw asReleaseError(`cannot record release ${id}`, err);
    }
    this.#log.info({ release: id, revision, durationMs: Date.now() - started }, 'release prepared');
    return { id, dir, revision, source: recorded };
  }

  /**
   * Step 2: links each `shared` entry from `<appDir>/shared/<entry>` into the release, replacing whatever
   * the source had there. Links are relative, so the state dir can move. Throws BERTH_E_RELEASE naming a
   * missing shared entry, or an entry whose place in the release is behind a symlink.
   */
  async linkShared(release: PreparedRelease): Promise<void> {
    if (this.#app.shared.length === 0) return;
    const sharedDir = join(await realpath(this.#appDir), 'shared');
    for (const entry of this.#app.shared) {
      const rel = sharedEntryPath(entry);
      const target = join(sharedDir, rel);
      try {
        await lstat(target);
      } catch (err) {
        throw new BerthError(ErrorCodes.release, `shared entry "${entry}" is missing: create ${join(this.sharedDir, rel)}`, { cause: err });
      }
      const link = join(release.dir, rel);
      try {
        await ensureRealParents(release.dir, rel);
        await rm(link, { recursive: true, force: true });
        await symlink(relative(dirname(link), target), link);
      } catch (err) {
        throw asReleaseError(`cannot link shared entry "${entry}" into release ${release.id}`, err);
      }
    }
    this.#log.info({ release: release.id, shared: this.#app.shared }, 'shared entries linked');
  }

  /**
   * Step 8: points `current` at `releases/<id>` with one rename() over it, so a reader always finds
   * either the old or the new release. The target is relative, so the state dir can move.
   */
  async activate(id: string): Promise<void> {
    if (!(await this.dirOf(id))) throw new BerthError(ErrorCodes.release, `release ${id} of app ${this.#app.name} does not exist`);
    await symlinkAtomic(posix.join('releases', id), this.#currentLink);
    this.#log.info({ release: id }, 'current release switched');
  }

  /** The release `current` points at, with its real path; null when the link is missing or dangling. */
  async current(): Promise<{ id: string; dir: string } | null> {
    // One realpath() gives id and dir from the same link state, even while activate() swaps it.
    let dir: string;
    try {
      dir = await realpath(this.#currentLink);
      if (!(await stat(dir)).isDirectory()) return null;
    } catch {
      return null;
    }
    return { id: basename(dir), dir };
  }

  /** Real path of `releases/<id>`, or null when it does not exist on disk (or `id` is not a release id). */
  async dirOf(id: string): Promise<string | null> {
    // Ids arrive from the API too; the pattern keeps `../..` and friends out of the path.
    if (!RELEASE_ID_RE.test(id)) return null;
    try {
      const dir = await realpath(join(this.#releasesDir, id));
      return (await stat(dir)).isDirectory() ? dir : null;
    } catch {
      return null;
    }
  }

  /**
   * Removes `releases/<id>` (never the release `current` names): a release this node failed to make for
   * the fleet, which may be half built, so that the next try makes it whole.
   */
  async discard(id: string): Promise<void> {
    if (!RELEASE_ID_RE.test(id) || (await this.current())?.id === id) return;
    await rm(join(this.#releasesDir, id), { recursive: true, force: true });
    this.#log.warn({ release: id }, 'release removed: this node could not make it');
  }

  /** Marks a release failed in the store; its directory stays for inspection until pruned. */
  async markFailed(id: string): Promise<void> {
    await this.#store.setReleaseState(this.#app.name, id, 'failed');
    this.#log.warn({ release: id }, 'release marked failed');
  }

  /**
   * Step 12: keeps the newest `keep_releases` releases that are not failed, plus the active and the
   * previous release whatever their age, and removes every other release directory. Failed releases
   * never take one of the kept places. Removed releases get state 'pruned' in the store, except failed
   * ones, which stay 'failed'; every removed release that has a row gets `prunedAt`, so a failed one
   * reads `failed, pruned` in `berth releases`. Returns the pruned ids, newest first.
   */
  async prune(activeId: string, previousId: string | null, opts: { record?: boolean } = {}): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.#releasesDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw asReleaseError(`cannot list releases of app ${this.#app.name}`, err);
    }
    // Newest first. Ids sort by the second they were made in; two made in the same second are ordered by
    // the store's millisecond creation time (their random suffixes say nothing). Dot-names (releases being
    // built) never match.
    const records = await this.#store.listReleases(this.#app.name);
    const states = new Map(records.map((r) => [r.id, r.state]));
    const created = new Map(records.map((r) => [r.id, r.createdAt]));
    const newerFirst = (a: string, b: string): number => {
      const sa = a.slice(0, 14);
      const sb = b.slice(0, 14);
      if (sa !== sb) return sa < sb ? 1 : -1;
      const ca = created.get(a) ?? '';
      const cb = created.get(b) ?? '';
      if (ca !== cb) return ca < cb ? 1 : -1;
      return a < b ? 1 : -1;
    };
    const ids = names.filter((n) => RELEASE_ID_RE.test(n)).sort(newerFirst);
    const keep = Math.max(0, this.#app.keepReleases);
    let kept = 0;
    const pruned: string[] = [];
    for (const id of ids) {
      const state = states.get(id);
      const counts = state === undefined || !NOT_KEPT.has(state);
      const inWindow = counts && kept < keep;
      if (counts) kept++;
      if (inWindow || id === activeId || id === previousId) continue;
      try {
        await rm(join(this.#releasesDir, id), { recursive: true, force: true });
        await removeManifest(this.#appDir, id);
      } catch (err) {
        throw asReleaseError(`cannot remove release ${id} of app ${this.#app.name}`, err);
      }
      // A failed release stays `failed`: that it failed is what its row is kept for, and `berth releases`
      // must go on saying so once its directory is gone. Rollback refuses it either way. The state is
      // written before the time, so a crash between the two leaves a row like an older gateway's
      // (`pruned`, no time) rather than a live state with a time.
      // A fleet node following another's deploys prunes its own directories only: the rows are the fleet's.
      if (state !== undefined && opts.record !== false) {
        if (state !== 'failed') await this.#store.setReleaseState(this.#app.name, id, 'pruned');
        await this.#store.setReleasePrunedAt(this.#app.name, id, new Date().toISOString());
      }
      pruned.push(id);
    }
    if (pruned.length > 0) this.#log.info({ pruned, keep, active: activeId, previous: previousId }, 'releases pruned');
    return pruned;
  }
}

/**
 * Writes `<release>/REVISION`. Whatever the source put there (a file, a directory, a symlink to a file
 * elsewhere) is removed first, and the new file is created exclusively (O_EXCL never follows a link),
 * so the write can only land in the release.
 */
async function writeRevision(dir: string, revision: string): Promise<void> {
  const file = join(dir, REVISION_FILE);
  await rm(file, { recursive: true, force: true });
  await writeFile(file, `${revision}\n`, { flag: 'wx' });
}

/** A shared entry as a clean relative path; anything absolute or climbing out is a config mistake. */
function sharedEntryPath(entry: string): string {
  const rel = posix.normalize(entry.replace(/\/+$/, ''));
  if (rel === '' || rel === '.' || rel === '..' || rel.startsWith('../') || posix.isAbsolute(rel)) {
    throw new BerthError(ErrorCodes.release, `shared entry "${entry}" must be a relative path inside the release`);
  }
  return rel;
}

/**
 * Creates the directories above a shared entry in the release. A symlink on the way (from the source)
 * would make the link, and the removal before it, land outside the release, so that is refused.
 */
async function ensureRealParents(root: string, rel: string): Promise<void> {
  const parts = rel.split('/').slice(0, -1);
  let dir = root;
  for (const part of parts) {
    dir = join(dir, part);
    let st;
    try {
      st = await lstat(dir);
    } catch {
      await mkdir(dir);
      continue;
    }
    if (st.isSymbolicLink()) throw new BerthError(ErrorCodes.release, `"${relative(root, dir)}" in the release is a symlink; a shared entry cannot be linked below it`);
    if (!st.isDirectory()) throw new BerthError(ErrorCodes.release, `"${relative(root, dir)}" in the release is not a directory`);
  }
}

/**
 * The error with every trace of the source's credentials removed from its message. The cause is dropped
 * when the message changed, since it may quote the URL as given.
 */
function redactError(err: BerthError, source: string): BerthError {
  const message = redactText(err.message, [source.trim()]);
  return message === err.message ? err : new BerthError(err.code, message, { details: err.details });
}

function asReleaseError(context: string, err: unknown): BerthError {
  if (err instanceof BerthError && err.code === ErrorCodes.release) return err;
  return new BerthError(ErrorCodes.release, `${context}: ${errorMessage(err)}`, { cause: err });
}
