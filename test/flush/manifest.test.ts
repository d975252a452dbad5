/**
 * Release manifests: what buildManifest lists (and never lists: symlinks out of the release, a static
 * dir that leaves it), changedPaths, and saving, loading and removing them.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { buildManifest, changedPaths, loadManifest, manifestOf, removeManifest, saveManifest, type Manifest } from '../../src/flush/manifest.ts';
import type { AppConfig, RouteConfig } from '../../src/config/schema.ts';
import { removeAfter } from '../helpers/cleanup.ts';

const RELEASE = '20260101120000-abc123';
const OTHER_RELEASE = '20260102120000-def456';

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-manifest-'));
  removeAfter(t, dir);
  return dir;
}

async function put(root: string, rel: string, content: string): Promise<void> {
  await mkdir(dirname(join(root, rel)), { recursive: true });
  await writeFile(join(root, rel), content);
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

function staticRoute(path: string, dir: string | null, cache: string | null = null): RouteConfig {
  return { path, to: dir === null ? 'web' : null, static: dir, cache, cors: null, buffering: true, affinity: null };
}

function app(routes: RouteConfig[], maxReleaseFiles = 1000): Pick<AppConfig, 'routes' | 'maxReleaseFiles'> {
  return { routes, maxReleaseFiles };
}

test('buildManifest: every file of each static route, by URL path, with the sha256 of its content', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await put(release, 'site/index.html', '<h1>home</h1>');
  await put(release, 'site/about/team/index.html', 'team');
  await put(release, 'site/my file #1.txt', 'spaces');
  await put(release, 'public/app.js', 'console.log(1)');
  await put(release, 'public/css/deep/er/site.css', 'body{}');
  await put(release, 'public/empty.txt', '');
  await mkdir(join(release, 'public', 'empty-dir'));
  await put(release, 'app/server.js', 'not served');
  const manifest = await buildManifest(app([staticRoute('/api', null), staticRoute('/', 'site'), staticRoute('/static', 'public', 'immutable')]), release);
  assert.deepEqual(manifest, {
    '/index.html': sha256('<h1>home</h1>'),
    '/': sha256('<h1>home</h1>'), // a directory's index.html answers the directory too
    '/about/team/index.html': sha256('team'),
    '/about/team/': sha256('team'),
    '/my file #1.txt': sha256('spaces'),
    '/static/app.js': sha256('console.log(1)'),
    '/static/css/deep/er/site.css': sha256('body{}'),
    '/static/empty.txt': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  });
  for (const hash of Object.values(manifest)) assert.match(hash, /^[0-9a-f]{64}$/);
});

test('buildManifest: a symlink to a file outside the release, or a static dir leaving it, is not listed', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  const outside = join(dir, 'outside');
  await put(outside, 'secret.txt', 'top secret');
  await put(outside, 'assets/leak.js', 'leak');
  await put(release, 'site/ok.txt', 'ok');
  await symlink(join(outside, 'secret.txt'), join(release, 'site', 'secret.txt'));
  await symlink(join(outside, 'assets'), join(release, 'site', 'linked-dir'));
  // The whole static dir of /leaving is a symlink out of the release.
  await symlink(join(outside, 'assets'), join(release, 'leaving'));
  const manifest = await buildManifest(app([staticRoute('/', 'site'), staticRoute('/leaving', 'leaving')]), release);
  assert.deepEqual(manifest, { '/ok.txt': sha256('ok') });
});

test('buildManifest: a symlink within the release is not followed either; a static dir linked inside the release is read', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await put(release, 'build/public/a.js', 'a');
  await put(release, 'site/real.txt', 'real');
  await symlink(join(release, 'build', 'public', 'a.js'), join(release, 'site', 'alias.js'));
  await symlink('build/public', join(release, 'public'));
  const manifest = await buildManifest(app([staticRoute('/', 'site'), staticRoute('/static', 'public')]), release);
  assert.deepEqual(manifest, { '/real.txt': sha256('real'), '/static/a.js': sha256('a') });
});

test('buildManifest: a symlink to a file inside its static dir serves that file, and .well-known is listed', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await put(release, 'site/app.v2.js', 'v2');
  await put(release, 'site/.well-known/security.txt', 'contact');
  await symlink('app.v2.js', join(release, 'site', 'latest.js'));
  const manifest = await buildManifest(app([staticRoute('/', 'site')]), release);
  assert.deepEqual(manifest, { '/.well-known/security.txt': sha256('contact'), '/app.v2.js': sha256('v2'), '/latest.js': sha256('v2') });
});

test('buildManifest: a missing static dir lists nothing and is no error', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await put(release, 'site/a.txt', 'a');
  const manifest = await buildManifest(app([staticRoute('/missing', 'no-such-dir'), staticRoute('/', 'site')]), release);
  assert.deepEqual(manifest, { '/a.txt': sha256('a') });
  assert.deepEqual(await buildManifest(app([staticRoute('/missing', 'no-such-dir')]), release), {});
  assert.deepEqual(await buildManifest(app([staticRoute('/', null)]), release), {});
});

test('buildManifest: a static "dir" that is a file serves nothing, so it lists nothing and is no error', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await put(release, 'site/a.txt', 'a');
  await put(release, 'afile', 'not a dir');
  assert.deepEqual(await buildManifest(app([staticRoute('/f', 'afile'), staticRoute('/', 'site')]), release), { '/a.txt': sha256('a') });
});

test('buildManifest: the route that serves a path (the longest prefix) gives its hash, whatever the route order', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  // site/static/app.js is shadowed: the router sends /static/* to the /static route (public/).
  await put(release, 'site/static/app.js', 'shadowed');
  await put(release, 'public/app.js', 'served');
  const routes = [staticRoute('/', 'site'), staticRoute('/static', 'public')];
  assert.deepEqual(await buildManifest(app(routes), release), { '/static/app.js': sha256('served') });
});

test('buildManifest: more static files than maxReleaseFiles throws; exactly as many is fine', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await put(release, 'site/a', '1');
  await put(release, 'site/b/c', '2');
  await put(release, 'public/d', '3');
  const routes = [staticRoute('/', 'site'), staticRoute('/static', 'public')];
  // Every entry counts, the directory b included: 4.
  assert.equal(Object.keys(await buildManifest(app(routes, 4), release)).length, 3);
  await assert.rejects(buildManifest(app(routes, 3), release), /more than 3 static entries/);
});

test('changedPaths: added, changed and removed paths, sorted; nothing for equal manifests', () => {
  const before: Manifest = { '/z.js': 'h1', '/a.css': 'h2', '/gone.txt': 'h3', '/same.png': 'h4' };
  const after: Manifest = { '/same.png': 'h4', '/z.js': 'h1-changed', '/a.css': 'h2', '/new/b.js': 'h5', '/0.txt': 'h6' };
  assert.deepEqual(changedPaths(before, after), ['/0.txt', '/gone.txt', '/new/b.js', '/z.js']);
  assert.deepEqual(changedPaths(before, { ...before }), []);
  assert.deepEqual(changedPaths({}, {}), []);
  assert.deepEqual(changedPaths({}, { '/b': 'x', '/a': 'y' }), ['/a', '/b']);
  assert.deepEqual(changedPaths({ '/b': 'x', '/a': 'y' }, {}), ['/a', '/b']);
});

test('saveManifest / loadManifest round trip, beside the releases in manifests/', async (t) => {
  const appDir = await tempDir(t);
  const manifest: Manifest = { '/index.html': sha256('a'), '/static/my file.js': sha256('b') };
  await saveManifest(appDir, RELEASE, manifest);
  assert.deepEqual(await readdir(join(appDir, 'manifests')), [`${RELEASE}.json`]);
  assert.deepEqual(await loadManifest(appDir, RELEASE), manifest);
  // Another release has none.
  assert.equal(await loadManifest(appDir, OTHER_RELEASE), null);
  // Saving again replaces it.
  await saveManifest(appDir, RELEASE, { '/x': 'y' });
  assert.deepEqual(await loadManifest(appDir, RELEASE), { '/x': 'y' });
});

test('saveManifest refuses an id that is not a release id; loadManifest gives null for one', async (t) => {
  const appDir = await tempDir(t);
  for (const bad of ['../../etc/passwd', 'current', '20260101120000-ABC123', '2026010112000-abc123', '']) {
    await assert.rejects(saveManifest(appDir, bad, {}), /is not a release id/);
    assert.equal(await loadManifest(appDir, bad), null);
  }
  assert.equal(existsSync(join(appDir, 'manifests')), false);
});

test('loadManifest: corrupt JSON, or JSON that is not a mapping, is null; entries not paths or not strings are dropped', async (t) => {
  const appDir = await tempDir(t);
  await mkdir(join(appDir, 'manifests'));
  const file = join(appDir, 'manifests', `${RELEASE}.json`);
  for (const text of ['{"/a": "h', '', 'null', '[]', '"text"', '42']) {
    await writeFile(file, text);
    assert.equal(await loadManifest(appDir, RELEASE), null, `for ${JSON.stringify(text)}`);
  }
  await writeFile(file, JSON.stringify({ '/a': 'h1', b: 'h2', '/c': 3, '/d': null, '/e': 'h5' }));
  assert.deepEqual(await loadManifest(appDir, RELEASE), { '/a': 'h1', '/e': 'h5' });
});

test('removeManifest removes it; removing a missing one, or a bad id, is no error', async (t) => {
  const appDir = await tempDir(t);
  await saveManifest(appDir, RELEASE, { '/a': 'h' });
  await saveManifest(appDir, OTHER_RELEASE, { '/b': 'h' });
  await removeManifest(appDir, RELEASE);
  assert.equal(await loadManifest(appDir, RELEASE), null);
  assert.deepEqual(await readdir(join(appDir, 'manifests')), [`${OTHER_RELEASE}.json`]);
  await removeManifest(appDir, RELEASE);
  await removeManifest(appDir, '../x');
  assert.deepEqual(await loadManifest(appDir, OTHER_RELEASE), { '/b': 'h' });
});

test('manifestOf: the saved manifest when there is one, else one built now and saved', async (t) => {
  const dir = await tempDir(t);
  const appDir = join(dir, 'app');
  const release = join(dir, 'release');
  await put(release, 'public/a.js', 'a');
  const config = { routes: [staticRoute('/static', 'public')], maxReleaseFiles: 100 } as unknown as AppConfig;
  const built = await manifestOf(config, appDir, RELEASE, release);
  assert.deepEqual(built, { '/static/a.js': sha256('a') });
  assert.deepEqual(await loadManifest(appDir, RELEASE), built);
  // The saved one is used as it is, even though the directory changed since.
  await put(release, 'public/b.js', 'b');
  assert.deepEqual(await manifestOf(config, appDir, RELEASE, release), built);
  // A manifest that cannot be saved (not a release id) is still returned.
  assert.deepEqual(await manifestOf(config, appDir, 'not-an-id', release), { '/static/a.js': sha256('a'), '/static/b.js': sha256('b') });
});

test('buildManifest lists paths as they are served: no dot-file, index.html also as its directory, precompressed siblings folded into their file', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'bm-'));
  removeAfter(t, root);
  await mkdir(join(root, 'public', 'docs'), { recursive: true });
  await writeFile(join(root, 'public', '.env'), 'SECRET=1\n');
  await writeFile(join(root, 'public', 'docs', 'index.html'), '<p>docs</p>\n');
  await writeFile(join(root, 'public', 'app.css'), 'body{}\n');
  await writeFile(join(root, 'public', 'app.css.br'), 'br-bytes');
  const app = { routes: [{ path: '/static', to: null, static: 'public', cache: null, cors: null, buffering: true, affinity: null }], maxReleaseFiles: 100 };
  const before = await buildManifest(app, root);
  assert.ok(!('/static/.env' in before), 'a dot-file is never served');
  assert.equal(before['/static/docs/'], before['/static/docs/index.html']);
  await writeFile(join(root, 'public', 'app.css.br'), 'other-br-bytes');
  const after = await buildManifest(app, root);
  assert.deepEqual(changedPaths(before, after), ['/static/app.css', '/static/app.css.br'], 'a changed sibling flushes the file it is served for');
});
