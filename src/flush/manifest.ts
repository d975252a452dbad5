/**
 * A release's static manifest: the URL path and content hash of every file its static routes serve, so
 * a deploy (or a rollback) can tell exactly which paths changed between the release that served and
 * the one that serves now (the paths a CDN must forget). Kept beside the releases, in
 * `<app dir>/manifests/<release>.json`, made once the release's build and release commands ran (they
 * may make the assets), and pruned with its release.
 *
 * Paths are listed as static.ts serves them: each by the route that serves it (the longest prefix);
 * no dot-file (never served); a directory's `index.html` also as the directory (`/docs/`); and a file
 * with precompressed siblings (`app.css.br`, `app.css.gz`, served for `/app.css`) hashed with them, so
 * a change to any of them flushes `/app.css`. Only regular files inside the release are listed: a
 * symlink is not followed, and a tree is read no wider than the app's release limits allow.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, realpath, rm, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import type { AppConfig } from '../config/schema.ts';
import { writeFileAtomic } from '../lib/atomic-fs.ts';

/** URL path -> sha256 of the file's content (hex). */
export type Manifest = Record<string, string>;

const MANIFEST_DIR = 'manifests';
const RELEASE_ID_RE = /^\d{14}-[0-9a-f]{6}$/;

/** Lists every file the app's static routes serve from `releaseDir`, with its hash. */
export async function buildManifest(app: Pick<AppConfig, 'routes' | 'maxReleaseFiles'>, releaseDir: string): Promise<Manifest> {
  const manifest: Manifest = {};
  const root = await realpath(releaseDir);
  let budget = app.maxReleaseFiles;
  // Longest prefix first, as the router picks: a path two routes could serve is hashed from the one that does.
  const routes = app.routes.filter((r) => r.static !== null).sort((a, b) => b.path.length - a.path.length);
  for (const route of routes) {
    let dir: string;
    try {
      dir = await realpath(join(root, route.static!));
      if (!(await stat(dir)).isDirectory()) continue; // a file named as a static dir serves nothing
    } catch {
      continue; // the release has no such directory: the route serves nothing
    }
    if (dir !== root && !dir.startsWith(root + sep)) continue; // a static dir that leaves the release is never served
    const prefix = route.path === '/' ? '' : route.path;
    const mine: Manifest = {};
    const count = () => {
      if (--budget < 0) throw new Error(`more than ${app.maxReleaseFiles} static entries`);
    };
    for await (const [file, content] of walk(dir, dir, count, 0)) {
      const urlPath = `${prefix}/${relative(dir, file).split(sep).join('/')}`;
      if (urlPath in manifest) continue; // a longer route serves it
      mine[urlPath] = await hashFile(content);
    }
    Object.assign(manifest, servedAs(mine));
  }
  return manifest;
}

/** One route's files as the URLs they answer: siblings folded into their file, index.html as its directory too. */
function servedAs(files: Manifest): Manifest {
  const out: Manifest = { ...files };
  for (const [path, hash] of Object.entries(files)) {
    const base = /\.(br|gz)$/.exec(path) ? path.slice(0, -3) : null;
    if (base !== null && base in files) out[base] = createHash('sha256').update(`${out[base]}|${path}|${hash}`).digest('hex');
  }
  for (const path of Object.keys(files)) {
    if (path.endsWith('/index.html')) out[path.slice(0, -'index.html'.length)] = out[path]!;
  }
  return out;
}

/** The paths added, changed or removed from `before` to `after`, sorted. */
export function changedPaths(before: Manifest, after: Manifest): string[] {
  const out = new Set<string>();
  for (const [path, hash] of Object.entries(after)) if (before[path] !== hash) out.add(path);
  for (const path of Object.keys(before)) if (!(path in after)) out.add(path);
  return [...out].sort();
}

export async function saveManifest(appDir: string, releaseId: string, manifest: Manifest): Promise<void> {
  if (!RELEASE_ID_RE.test(releaseId)) throw new Error(`"${releaseId}" is not a release id`);
  await mkdir(join(appDir, MANIFEST_DIR), { recursive: true, mode: 0o750 });
  await writeFileAtomic(manifestPath(appDir, releaseId), JSON.stringify(manifest));
}

/** The saved manifest, or null when there is none (an older release) or it cannot be read. */
export async function loadManifest(appDir: string, releaseId: string): Promise<Manifest | null> {
  if (!RELEASE_ID_RE.test(releaseId)) return null;
  try {
    const parsed = JSON.parse(await readFile(manifestPath(appDir, releaseId), 'utf8')) as unknown;
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return null;
    const out: Manifest = {};
    for (const [k, v] of Object.entries(parsed)) if (typeof v === 'string' && k.startsWith('/')) out[k] = v;
    return out;
  } catch {
    return null;
  }
}

/** The saved manifest, else one made now from the release's directory (and saved). */
export async function manifestOf(app: AppConfig, appDir: string, releaseId: string, releaseDir: string): Promise<Manifest> {
  const saved = await loadManifest(appDir, releaseId);
  if (saved) return saved;
  const made = await buildManifest(app, releaseDir);
  await saveManifest(appDir, releaseId, made).catch(() => {});
  return made;
}

export async function removeManifest(appDir: string, releaseId: string): Promise<void> {
  if (RELEASE_ID_RE.test(releaseId)) await rm(manifestPath(appDir, releaseId), { force: true });
}

function manifestPath(appDir: string, releaseId: string): string {
  return join(appDir, MANIFEST_DIR, `${releaseId}.json`);
}

/** Deeper than this, a static tree is not read (no site nests so deep; a hostile build might). */
const MAX_DEPTH = 32;

/**
 * Every file under `dir` as [its path, the file whose content it serves]: a symlink to a file inside the
 * static dir `root` serves that file (as static.ts does); one leaving it serves nothing. Every entry
 * counts against the budget (`count` throws past it), directories and links included.
 */
async function* walk(dir: string, root: string, count: () => void, depth: number): AsyncGenerator<[string, string]> {
  if (depth > MAX_DEPTH) return;
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    count();
    // static.ts serves no dot-name but `.well-known`.
    if (e.name.startsWith('.') && e.name !== '.well-known') continue;
    const path = join(dir, e.name);
    if (e.isDirectory()) yield* walk(path, root, count, depth + 1);
    else if (e.isFile()) yield [path, path];
    else if (e.isSymbolicLink()) {
      const target = await realpath(path).catch(() => null);
      if (target !== null && target.startsWith(root + sep) && (await stat(target).catch(() => null))?.isFile()) yield [path, target];
    }
  }
}

function hashFile(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve(hash.digest('hex')))
      .on('error', reject);
  });
}
