import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { chmod, lstat, mkdir, readFile, readdir, readlink, realpath, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import type { ReleaseState } from '../../src/store/store.ts';
import { ReleaseStore, RELEASE_ID_RE, type PreparedRelease } from '../../src/deploy/release-store.ts';
import { parseSource } from '../../src/deploy/sources.ts';
import { treeHash } from '../../src/deploy/release-tree.ts';
import type { AppConfig } from '../../src/config/schema.ts';
import { appConfig, assertNothingLeft, git, releaseError, setup, tempDir, tree, type Setup } from './release-fixtures.ts';

const exec = promisify(execFile);

// ---- helpers -------------------------------------------------------------------------------

/** A repo with two commits: v1 (tagged) and the tip of main. Returns its path and both SHAs. */
async function gitRepo(dir: string): Promise<{ repo: string; v1: string; main: string }> {
  const repo = join(dir, 'repo');
  await mkdir(repo);
  await git(repo, 'init', '-q');
  await tree(repo, { 'server.js': 'v1', 'lib/a.js': 'a' });
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-q', '-m', 'one');
  await git(repo, 'tag', 'v1');
  await tree(repo, { 'server.js': 'v2' });
  await git(repo, 'commit', '-q', '-am', 'two');
  const sha = async (ref: string) => (await git(repo, 'rev-parse', ref)).stdout.trim();
  return { repo, v1: await sha('v1'), main: await sha('main') };
}

type TarEntry = { name: string; type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'fifo'; body?: string; link?: string };

/**
 * Writes a .tar.gz byte for byte (ustar), for archives the tar CLI refuses to make: hard links out of the
 * tree, entries below symlinks, FIFOs.
 */
async function craftArchive(path: string, entries: TarEntry[]): Promise<string> {
  const flags = { file: '0', hardlink: '1', symlink: '2', dir: '5', fifo: '6' } as const;
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    const h = Buffer.alloc(512);
    const put = (s: string, off: number) => h.write(s, off, 'utf8');
    put(e.name, 0);
    put('0000644\0', 100);
    put('0000000\0', 108);
    put('0000000\0', 116);
    put(`${body.length.toString(8).padStart(11, '0')}\0`, 124);
    put('00000000000\0', 136);
    h.fill(' ', 148, 156);
    put(flags[e.type], 156);
    put(e.link ?? '', 157);
    put('ustar\0' + '00', 257);
    let sum = 0;
    for (const b of h) sum += b;
    put(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  await writeFile(path, gzipSync(Buffer.concat(blocks)));
  return path;
}

// ---- ids -----------------------------------------------------------------------------------

test('newReleaseId: YYYYMMDDHHMMSS-<6 hex> in UTC, random suffix, sorting by time', async (t) => {
  const { releases } = await setup(t);
  const id = releases.newReleaseId(new Date('2024-03-05T07:08:09.999Z'));
  assert.match(id, /^20240305070809-[0-9a-f]{6}$/);
  assert.match(releases.newReleaseId(), RELEASE_ID_RE);
  const same = new Set(Array.from({ length: 50 }, () => releases.newReleaseId(new Date('2024-01-01T00:00:00Z'))));
  assert.ok(same.size > 45, 'the suffix is random');
  const times = ['2023-12-31T23:59:59Z', '2024-01-01T00:00:00Z', '2024-01-01T00:00:01Z', '2024-10-01T00:00:00Z'];
  const ids = times.map((s) => releases.newReleaseId(new Date(s)));
  assert.deepEqual([...ids].sort(), ids);
  assert.equal(releases.appDir, join(releases.releasesDir, '..'));
  assert.equal(releases.currentLink, join(releases.appDir, 'current'));
});

// ---- sources -------------------------------------------------------------------------------

test('parseSource: directories, archives and git sources with refs', () => {
  assert.deepEqual(parseSource('./app', '/base'), { kind: 'directory', path: '/base/app' });
  assert.deepEqual(parseSource('/x/app.tar.gz'), { kind: 'archive', path: '/x/app.tar.gz' });
  assert.deepEqual(parseSource('rel.tgz', '/base'), { kind: 'archive', path: '/base/rel.tgz' });
  assert.deepEqual(parseSource('/srv/repo#main'), { kind: 'git', url: '/srv/repo', ref: 'main', local: true });
  assert.deepEqual(parseSource('/srv/repo.git'), { kind: 'git', url: '/srv/repo.git', ref: 'HEAD', local: true });
  assert.deepEqual(parseSource('/srv/repo#'), { kind: 'git', url: '/srv/repo', ref: 'HEAD', local: true });
  assert.deepEqual(parseSource('https://host/repo.git#v1.2'), { kind: 'git', url: 'https://host/repo.git', ref: 'v1.2', local: false });
  assert.deepEqual(parseSource('git@host:org/repo.git'), { kind: 'git', url: 'git@host:org/repo.git', ref: 'HEAD', local: false });
  assert.deepEqual(parseSource('file:///srv/repo#abc123'), { kind: 'git', url: 'file:///srv/repo', ref: 'abc123', local: false });
  assert.throws(() => parseSource('  '), releaseError(/empty/));
  assert.throws(() => parseSource('/srv/repo#--upload-pack=evil'), releaseError(/bad ref/));
  assert.throws(() => parseSource('/srv/repo#a b'), releaseError(/bad ref/));
  assert.throws(() => parseSource('#main'), releaseError(/names no repository/));
  assert.throws(() => parseSource('--upload-pack=x#main'), releaseError(/must not start with "-"/));
});

test('prepare (directory): copies the tree, keeps symlinks, skips .git and the state dir, writes REVISION, records building', async (t) => {
  const dir = await tempDir(t);
  // The common layout: berth.yaml beside the app, state_dir .berth inside the deployed directory.
  const src = await tree(join(dir, 'app'), {
    'server.js': 'console.log(1)',
    'public/index.html': '<h1>hi</h1>',
    '.git/HEAD': 'ref: refs/heads/main',
    'vendor/dep/.git': 'gitdir: ../../.git/modules/dep',
    'vendor/dep/index.js': 'dep',
    'REVISION': 'stale revision from the source',
    'var/keep.txt': 'kept',
  });
  await chmod(join(src, 'server.js'), 0o755);
  await symlink('public/index.html', join(src, 'index-link'));
  await exec('mkfifo', [join(src, 'a-fifo')]);
  const stateDir = join(src, 'var', 'berth');
  await mkdir(stateDir, { recursive: true });
  const store = new SqliteStore({ path: join(stateDir, 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  t.after(() => store.close());
  await store.open();
  const releases = new ReleaseStore({ stateDir, app: appConfig(), store, logger: silentLogger() });

  const before = Date.now();
  const r = await releases.prepare(src);
  assert.match(r.id, RELEASE_ID_RE);
  assert.equal(r.dir, await realpath(join(releases.releasesDir, r.id)));
  assert.equal(r.source, src);
  assert.equal(await readFile(join(r.dir, 'server.js'), 'utf8'), 'console.log(1)');
  assert.equal(await readFile(join(r.dir, 'public/index.html'), 'utf8'), '<h1>hi</h1>');
  assert.equal((await stat(join(r.dir, 'server.js'))).mode & 0o111, 0o111, 'the executable bit survives');
  assert.equal(await readFile(join(r.dir, 'vendor/dep/index.js'), 'utf8'), 'dep');
  assert.equal(await readFile(join(r.dir, 'var/keep.txt'), 'utf8'), 'kept');
  for (const skipped of ['.git', 'vendor/dep/.git', 'var/berth', 'a-fifo']) {
    await assert.rejects(lstat(join(r.dir, skipped)), /ENOENT/, `${skipped} is not copied`);
  }
  assert.ok((await lstat(join(r.dir, 'index-link'))).isSymbolicLink());
  assert.equal(await readlink(join(r.dir, 'index-link')), 'public/index.html');

  assert.match(r.revision, /^[0-9a-f]{64}$/);
  assert.equal(await readFile(join(r.dir, 'REVISION'), 'utf8'), `${r.revision}\n`);
  assert.equal(await treeHash(r.dir), r.revision, 'REVISION is the content hash of the tree it sits in');
  const rec = await store.getRelease('shop', r.id);
  assert.deepEqual({ ...rec!, createdAt: '' }, { app: 'shop', id: r.id, createdAt: '', state: 'building', source: src, revision: r.revision, prunedAt: null });
  assert.ok(Date.parse(rec!.createdAt) >= before - 1000);
  assert.deepEqual((await readdir(releases.releasesDir)).filter((n) => n.startsWith('.')), [], 'no staging dirs left');

  // Same content, same hash; one changed byte, another.
  const again = await releases.prepare(src);
  assert.notEqual(again.id, r.id);
  assert.equal(again.revision, r.revision);
  await writeFile(join(src, 'server.js'), 'console.log(2)');
  assert.notEqual((await releases.prepare(src)).revision, r.revision);
});

test('prepare (directory): a missing source or a plain file fails and leaves nothing', async (t) => {
  const s = await setup(t);
  await assert.rejects(s.releases.prepare(join(s.dir, 'nope')), releaseError(/source directory .*nope does not exist/));
  await assertNothingLeft(s);
  await writeFile(join(s.dir, 'notes.txt'), 'x');
  await assert.rejects(s.releases.prepare(join(s.dir, 'notes.txt')), releaseError(/is not a directory, a \.tar\.gz archive or a git repository/));
  await assertNothingLeft(s);
});

test('prepare fails and removes the release dir when the store cannot record it', async (t) => {
  const s = await setup(t);
  const src = await tree(join(s.dir, 'app'), { 'a.txt': 'a' });
  await s.store.close();
  await assert.rejects(s.releases.prepare(src), releaseError(/cannot record release .*not open/));
  assert.deepEqual(await readdir(s.releases.releasesDir), []);
});

// ---- .tar.gz -------------------------------------------------------------------------------

test('prepare (.tar.gz): extracts the archive; the revision matches the same tree copied as a directory', async (t) => {
  const s = await setup(t);
  const src = await tree(join(s.dir, 'app'), { 'server.js': 'x', 'public/app.css': 'body{}' });
  await symlink('../server.js', join(src, 'public', 'link.js'));
  const archive = join(s.dir, 'app.tar.gz');
  await exec('tar', ['-czf', archive, '-C', src, '.']);

  const r = await s.releases.prepare(archive);
  assert.equal(r.source, archive);
  assert.equal(await readFile(join(r.dir, 'public/app.css'), 'utf8'), 'body{}');
  assert.equal(await readlink(join(r.dir, 'public/link.js')), '../server.js');
  assert.equal((await s.store.getRelease('shop', r.id))?.state, 'building');
  const copied = await s.releases.prepare(src);
  assert.equal(r.revision, copied.revision);
});

test('prepare (.tar.gz): a missing or corrupt archive fails and leaves nothing', async (t) => {
  const s = await setup(t);
  await assert.rejects(s.releases.prepare(join(s.dir, 'missing.tar.gz')), releaseError(/missing\.tar\.gz does not exist/));
  await assertNothingLeft(s);
  await writeFile(join(s.dir, 'corrupt.tar.gz'), 'this is not gzip');
  await assert.rejects(s.releases.prepare(join(s.dir, 'corrupt.tar.gz')), releaseError(/corrupt\.tar\.gz is not a readable \.tar\.gz: tar -t exited with 2/));
  await assertNothingLeft(s);
  // Valid gzip, truncated tar inside.
  await writeFile(join(s.dir, 'truncated.tar.gz'), gzipSync(Buffer.from('x'.repeat(700))));
  await assert.rejects(s.releases.prepare(join(s.dir, 'truncated.tar.gz')), releaseError(/not a readable \.tar\.gz/));
  await assertNothingLeft(s);
});

test('prepare (.tar.gz): entries escaping the release dir are refused before anything is written', async (t) => {
  const s = await setup(t);
  // Made with tar -P, which keeps "../" and leading "/" in member names.
  const work = await tree(join(s.dir, 'work', 'sub'), { 'x': '' });
  await tree(join(s.dir, 'work'), { 'evil': 'pwned' });
  await exec('tar', ['-czPf', join(s.dir, 'dotdot.tar.gz'), '../evil'], { cwd: work });
  await exec('tar', ['-czPf', join(s.dir, 'absolute.tar.gz'), join(s.dir, 'work', 'evil')]);
  await symlink('/etc', join(work, 'etc-link'));
  await symlink('../../../outside', join(work, 'up-link'));
  await exec('tar', ['-czf', join(s.dir, 'abs-link.tar.gz'), '-C', work, 'x', 'etc-link']);
  await exec('tar', ['-czf', join(s.dir, 'up-link.tar.gz'), '-C', work, 'x', 'up-link']);

  const cases: [string, RegExp][] = [
    ['dotdot.tar.gz', /entry "\.\.\/evil" escapes the release dir \("\.\." component\)/],
    ['absolute.tar.gz', /escapes the release dir \(absolute path\)/],
    ['abs-link.tar.gz', /entry "etc-link" escapes the release dir \(symlink to absolute path \/etc\)/],
    ['up-link.tar.gz', /entry "up-link" escapes the release dir \(symlink to \.\.\/\.\.\/\.\.\/outside\)/],
  ];
  for (const [file, pattern] of cases) {
    await assert.rejects(s.releases.prepare(join(s.dir, file)), releaseError(pattern), file);
    await assertNothingLeft(s);
  }
  // "../evil" from releases/.<id>.partial would have landed in releases/.
  await assert.rejects(lstat(join(s.releases.appDir, 'evil')), /ENOENT/);
});

test('prepare (.tar.gz): crafted hard links, entries below symlinks, link chains and FIFOs are refused', async (t) => {
  const s = await setup(t);
  const outside = await tree(join(s.dir, 'outside'), { 'secret': 'secret' });
  const cases: [string, TarEntry[], RegExp][] = [
    // GNU tar lists hard link targets cleaned of "../" and "/" and warns; either way it is refused.
    ['hardlink', [{ name: 'h', type: 'hardlink', link: '../../../../outside/secret' }], /escapes the release dir .*hard link/],
    ['hardlink-mid', [{ name: 'h', type: 'hardlink', link: 'lib/../../../../outside/secret' }], /escapes the release dir .*hard link/],
    ['hardlink-abs', [{ name: 'h', type: 'hardlink', link: `${outside}/secret` }], /escapes the release dir .*hard link/],
    [
      'below-symlink',
      [
        { name: 'd', type: 'symlink', link: '.' },
        { name: 'd/f', type: 'file', body: 'x' },
      ],
      /entry "d\/f" escapes the release dir \(goes through the symlink "d"\)/,
    ],
    // Each link looks harmless on its own; followed together, "s" points above the release.
    [
      'chain',
      [
        { name: 'x/', type: 'dir' },
        { name: 'x/y/', type: 'dir' },
        { name: 'x/y/up', type: 'symlink', link: '../..' },
        { name: 's', type: 'symlink', link: 'x/y/up/..' },
      ],
      /symlink "s" -> "x\/y\/up\/\.\." escapes the release dir/,
    ],
    ['fifo', [{ name: 'pipe', type: 'fifo' }], /entry "pipe" has an unsupported type "p"/],
  ];
  for (const [name, entries, pattern] of cases) {
    const archive = await craftArchive(join(s.dir, `${name}.tar.gz`), entries);
    await assert.rejects(s.releases.prepare(archive), releaseError(pattern), name);
    await assertNothingLeft(s);
  }
  assert.equal(await readFile(join(outside, 'secret'), 'utf8'), 'secret');
  // The writer itself makes archives tar accepts.
  const ok = await craftArchive(join(s.dir, 'ok.tar.gz'), [
    { name: 'lib/', type: 'dir' },
    { name: 'lib/a.js', type: 'file', body: 'a' },
    { name: 'lib/b.js', type: 'hardlink', link: 'lib/a.js' },
    { name: 'lib/c.js', type: 'symlink', link: 'a.js' },
  ]);
  const r = await s.releases.prepare(ok);
  assert.equal(await readFile(join(r.dir, 'lib/b.js'), 'utf8'), 'a');
  assert.equal(await readFile(join(r.dir, 'lib/c.js'), 'utf8'), 'a');
});

// ---- git -----------------------------------------------------------------------------------

test('prepare (git, local path): exports the ref with git archive; REVISION is the commit SHA', async (t) => {
  const s = await setup(t);
  const { repo, v1, main } = await gitRepo(s.dir);

  const r = await s.releases.prepare(`${repo}#main`);
  assert.equal(r.revision, main);
  assert.equal(r.source, `${repo}#main`);
  assert.equal(await readFile(join(r.dir, 'server.js'), 'utf8'), 'v2');
  assert.equal(await readFile(join(r.dir, 'lib/a.js'), 'utf8'), 'a');
  assert.equal(await readFile(join(r.dir, 'REVISION'), 'utf8'), `${main}\n`);
  await assert.rejects(lstat(join(r.dir, '.git')), /ENOENT/);
  assert.deepEqual({ ...(await s.store.getRelease('shop', r.id))!, createdAt: '' }, { app: 'shop', id: r.id, createdAt: '', state: 'building', source: `${repo}#main`, revision: main, prunedAt: null });

  const tagged = await s.releases.prepare(`${repo}#v1`);
  assert.equal(tagged.revision, v1);
  assert.equal(await readFile(join(tagged.dir, 'server.js'), 'utf8'), 'v1');
  const bySha = await s.releases.prepare(`${repo}#${v1.slice(0, 10)}`);
  assert.equal(bySha.revision, v1);
  const head = await s.releases.prepare(`${repo}#`);
  assert.equal(head.revision, main);
});

test('prepare (git, URL): clones, checks out the ref, and removes the clone', async (t) => {
  const s = await setup(t);
  const { repo, v1 } = await gitRepo(s.dir);
  await git(repo, 'branch', 'feature', 'v1');
  const r = await s.releases.prepare(`file://${repo}#feature`);
  assert.equal(r.revision, v1);
  assert.equal(r.source, `file://${repo}#feature`);
  assert.equal(await readFile(join(r.dir, 'server.js'), 'utf8'), 'v1');
  assert.deepEqual((await readdir(s.releases.releasesDir)).filter((n) => n.startsWith('.')), [], 'the clone is gone');
  // A bare repository path (".git" suffix) defaults to HEAD.
  await git(s.dir, 'clone', '-q', '--bare', repo, join(s.dir, 'bare.git'));
  assert.equal((await s.releases.prepare(join(s.dir, 'bare.git'))).revision, (await git(repo, 'rev-parse', 'HEAD')).stdout.trim());
});

test('prepare (git): unknown refs, missing repos, non-repos and failed clones fail and leave nothing', async (t) => {
  const s = await setup(t);
  const { repo } = await gitRepo(s.dir);
  await assert.rejects(s.releases.prepare(`${repo}#no-such-branch`), releaseError(/git ref "no-such-branch" not found in .*repo$/));
  await assertNothingLeft(s);
  await assert.rejects(s.releases.prepare(`file://${repo}#no-such-branch`), releaseError(/git ref "no-such-branch" not found/));
  await assertNothingLeft(s);
  await assert.rejects(s.releases.prepare(`${join(s.dir, 'missing')}#main`), releaseError(/git repository .*missing does not exist/));
  await assertNothingLeft(s);
  await assert.rejects(s.releases.prepare(`file://${join(s.dir, 'missing')}#main`), releaseError(/git clone of .* failed: git clone exited with 128/));
  await assertNothingLeft(s);
  // A plain directory inside a repository is not that repository.
  await mkdir(join(repo, 'sub'));
  await assert.rejects(s.releases.prepare(`${join(repo, 'sub')}#main`), releaseError(/not found in .*sub: .*not a git repository/));
  await assertNothingLeft(s);
});

test('prepare (git): a committed symlink out of the tree is refused', async (t) => {
  const s = await setup(t);
  const { repo } = await gitRepo(s.dir);
  await symlink('/etc/passwd', join(repo, 'passwd'));
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-q', '-m', 'evil');
  await assert.rejects(s.releases.prepare(`${repo}#main`), releaseError(/symlink "passwd" -> "\/etc\/passwd" escapes the release dir/));
  await assertNothingLeft(s);
});

// ---- shared --------------------------------------------------------------------------------

test('linkShared: links each entry with a relative link, replacing what the source had', async (t) => {
  const s = await setup(t, { shared: ['uploads', '.env', 'config/secrets.yml', 'storage/'] });
  await tree(s.releases.sharedDir, { 'uploads/cat.png': 'png', '.env': 'SECRET=1', 'config/secrets.yml': 'k: v', 'storage/x': 'x' });
  const src = await tree(join(s.dir, 'app'), { 'uploads/placeholder': 'from source', '.env': 'SECRET=dev', 'config/app.yml': 'a: 1' });
  const r = await s.releases.prepare(src);
  await s.releases.linkShared(r);

  for (const entry of ['uploads', '.env', 'config/secrets.yml', 'storage']) {
    const link = join(r.dir, entry);
    assert.ok((await lstat(link)).isSymbolicLink(), `${entry} is a link`);
    assert.ok(!isAbsolute(await readlink(link)), `${entry} links relatively`);
    assert.equal(await realpath(link), await realpath(join(s.releases.sharedDir, entry)));
  }
  assert.equal(await readFile(join(r.dir, '.env'), 'utf8'), 'SECRET=1');
  assert.deepEqual(await readdir(join(r.dir, 'uploads')), ['cat.png'], 'the source\'s uploads dir was replaced');
  assert.equal(await readFile(join(r.dir, 'config/app.yml'), 'utf8'), 'a: 1', 'siblings of a nested entry stay');
  // Linking twice is harmless.
  await s.releases.linkShared(r);
  assert.equal(await readFile(join(r.dir, '.env'), 'utf8'), 'SECRET=1');
});

test('linkShared: a missing entry, a path out of the release, or a symlinked parent fails naming the entry', async (t) => {
  const s = await setup(t, { shared: ['uploads', 'logs'] });
  await tree(s.releases.sharedDir, { 'uploads/a': 'a' });
  const r = await s.releases.prepare(await tree(join(s.dir, 'app'), { 'a.txt': 'a' }));
  await assert.rejects(s.releases.linkShared(r), releaseError(/shared entry "logs" is missing: create .*shared\/logs/));

  const outside = await tree(join(s.dir, 'outside'), { 'secrets.yml': 'do not delete' });
  const src = await tree(join(s.dir, 'app2'), { 'a.txt': 'a' });
  const nested = new ReleaseStore({ stateDir: s.stateDir, app: appConfig({ shared: ['config/secrets.yml'] }), store: s.store, logger: silentLogger() });
  await tree(nested.sharedDir, { 'config/secrets.yml': 'real' });
  const r2 = await nested.prepare(src);
  // A source can no longer bring a link out of the release (see the symlink tests); one made in the
  // release afterwards (by the app, or in a release from an older berth) must still not be written through.
  await symlink(outside, join(r2.dir, 'config'));
  await assert.rejects(nested.linkShared(r2), releaseError(/"config" in the release is a symlink/));
  assert.equal(await readFile(join(outside, 'secrets.yml'), 'utf8'), 'do not delete');

  for (const bad of ['../escape', '/etc/passwd', '.']) {
    const rs = new ReleaseStore({ stateDir: s.stateDir, app: appConfig({ shared: [bad] }), store: s.store, logger: silentLogger() });
    await assert.rejects(rs.linkShared(r), releaseError(/must be a relative path inside the release/), bad);
  }
});

// ---- current -------------------------------------------------------------------------------

async function twoReleases(t: TestContext, app: Partial<AppConfig> = {}): Promise<Setup & { a: PreparedRelease; b: PreparedRelease }> {
  const s = await setup(t, app);
  const a = await s.releases.prepare(await tree(join(s.dir, 'a'), { 'name.txt': 'a' }));
  const b = await s.releases.prepare(await tree(join(s.dir, 'b'), { 'name.txt': 'b' }));
  return { ...s, a, b };
}

test('activate/current: current follows activate through a relative link; unknown ids are refused', async (t) => {
  const s = await twoReleases(t);
  assert.equal(await s.releases.current(), null);
  await s.releases.activate(s.a.id);
  assert.deepEqual(await s.releases.current(), { id: s.a.id, dir: s.a.dir });
  assert.equal(await readlink(s.releases.currentLink), `releases/${s.a.id}`);
  await s.releases.activate(s.b.id);
  assert.deepEqual(await s.releases.current(), { id: s.b.id, dir: s.b.dir });
  assert.equal(await readFile(join(s.releases.currentLink, 'name.txt'), 'utf8'), 'b');
  assert.deepEqual((await readdir(s.releases.appDir)).sort(), ['current', 'releases'], 'no temp links left');

  await assert.rejects(s.releases.activate('20240101000000-abcdef'), releaseError(/release 20240101000000-abcdef of app shop does not exist/));
  await assert.rejects(s.releases.activate('../../etc'), releaseError(/does not exist/));
  assert.equal((await s.releases.current())?.id, s.b.id, 'a refused activate changes nothing');

  // Dangling: the release it names is gone.
  await rm(s.b.dir, { recursive: true });
  assert.equal(await s.releases.current(), null);
});

test('activate/current: the state dir can move and links still resolve', async (t) => {
  const s = await twoReleases(t, { shared: ['.env'] });
  await tree(s.releases.sharedDir, { '.env': 'X=1' });
  await s.releases.linkShared(s.a);
  await s.releases.activate(s.a.id);
  const moved = join(s.dir, 'moved-state');
  await rename(s.stateDir, moved);
  const after = new ReleaseStore({ stateDir: moved, app: appConfig(), store: s.store, logger: silentLogger() });
  const cur = await after.current();
  assert.equal(cur?.id, s.a.id);
  assert.equal(cur?.dir, join(moved, 'apps', 'shop', 'releases', s.a.id));
  assert.equal(await readFile(join(after.currentLink, '.env'), 'utf8'), 'X=1');
});

test('activate/current: the current link always resolves while it is swapped in a loop', async (t) => {
  const s = await twoReleases(t);
  await s.releases.activate(s.a.id);
  const ids = new Set([s.a.id, s.b.id]);
  let swapping = true;
  let reads = 0;
  const misses: string[] = [];
  const reader = (async () => {
    while (swapping) {
      // Two ways to look: through the store, and as a plain path a process would open.
      const cur = await s.releases.current();
      if (!cur || !ids.has(cur.id)) misses.push(`current() gave ${JSON.stringify(cur)}`);
      try {
        await readFile(join(s.releases.currentLink, 'name.txt'));
      } catch (err) {
        misses.push(String(err));
      }
      reads++;
    }
  })();
  try {
    for (let i = 0; i < 300; i++) await s.releases.activate(i % 2 === 0 ? s.b.id : s.a.id);
  } finally {
    swapping = false;
    await reader;
  }
  assert.ok(reads > 10, `the reader ran alongside (${reads} reads)`);
  assert.deepEqual(misses, []);
});

test('dirOf: the real path of an existing release, else null', async (t) => {
  const s = await twoReleases(t);
  assert.equal(await s.releases.dirOf(s.a.id), s.a.dir);
  assert.equal(await s.releases.dirOf('20240101000000-abcdef'), null);
  assert.equal(await s.releases.dirOf('../../..'), null);
  assert.equal(await s.releases.dirOf(''), null);
  await writeFile(join(s.releases.releasesDir, '20240101000000-ffffff'), 'a file, not a release');
  assert.equal(await s.releases.dirOf('20240101000000-ffffff'), null);
});

test('markFailed: marks the release failed in the store and keeps its dir', async (t) => {
  const s = await twoReleases(t);
  await s.releases.markFailed(s.a.id);
  assert.equal((await s.store.getRelease('shop', s.a.id))?.state, 'failed');
  assert.equal((await s.store.getRelease('shop', s.b.id))?.state, 'building');
  assert.equal(await s.releases.dirOf(s.a.id), s.a.dir);
  await assert.rejects(s.releases.markFailed('20240101000000-abcdef'), (err: unknown) => err instanceof BerthError && err.code === 'BERTH_E_NOT_FOUND');
});

// ---- prune ---------------------------------------------------------------------------------

/** Release dirs and rows with ids one day apart, oldest first; `states[i]` null: a dir with no row. */
async function releasesOnDisk(s: Setup, states: (ReleaseState | null)[]): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < states.length; i++) {
    const when = new Date(Date.UTC(2024, 0, 1 + i));
    const id = s.releases.newReleaseId(when);
    await mkdir(join(s.releases.releasesDir, id), { recursive: true });
    await writeFile(join(s.releases.releasesDir, id, 'REVISION'), 'r\n');
    const state = states[i];
    if (state) await s.store.putRelease({ app: 'shop', id, createdAt: when.toISOString(), state, source: '/src', revision: 'r' });
    ids.push(id);
  }
  return ids;
}

async function onDisk(s: Setup): Promise<string[]> {
  return (await readdir(s.releases.releasesDir)).sort();
}

test('prune: keeps the newest keep_releases, removes the rest, marks them pruned', async (t) => {
  const s = await setup(t, { keepReleases: 2 });
  const [r1, r2, r3, r4, r5] = await releasesOnDisk(s, ['ready', 'ready', 'ready', 'previous', 'active']);
  assert.deepEqual(await s.releases.prune(r5, r4), [r3, r2, r1]);
  assert.deepEqual(await onDisk(s), [r4, r5]);
  for (const id of [r1, r2, r3]) assert.equal((await s.store.getRelease('shop', id))?.state, 'pruned');
  assert.equal((await s.store.getRelease('shop', r5))?.state, 'active');
  assert.deepEqual(await s.releases.prune(r5, r4), [], 'pruning again removes nothing');
});

test('prune: failed releases do not count towards keep_releases and are removed', async (t) => {
  const s = await setup(t, { keepReleases: 3 });
  const [r1, r2, r3, r4, r5, r6] = await releasesOnDisk(s, ['ready', 'ready', 'previous', 'failed', 'failed', 'active']);
  assert.deepEqual(await s.releases.prune(r6, r3), [r5, r4, r1]);
  assert.deepEqual(await onDisk(s), [r2, r3, r6], 'three good releases are kept, not three newest');
  // Its directory is gone, but its row still says it failed (issue #11, defect 5); a good one says pruned.
  assert.equal((await s.store.getRelease('shop', r4))?.state, 'failed');
  assert.equal((await s.store.getRelease('shop', r1))?.state, 'pruned');
});

test('prune: every pruned release with a row gets prunedAt, failed or not, and keeps its state; kept ones get none', async (t) => {
  const s = await setup(t, { keepReleases: 1 });
  const [r1, r2, r3, r4, r5] = await releasesOnDisk(s, ['failed', 'ready', null, 'previous', 'active']);
  const before = new Date().toISOString();
  assert.deepEqual(await s.releases.prune(r5, r4), [r3, r2, r1]);
  const after = new Date().toISOString();
  const rows = new Map((await s.store.listReleases('shop')).map((r) => [r.id, r]));
  // The failed one says both facts, so `berth releases` can print `failed, pruned` (issue #11, defect 5).
  assert.equal(rows.get(r1)?.state, 'failed');
  assert.equal(rows.get(r2)?.state, 'pruned');
  for (const id of [r1, r2]) {
    const at = rows.get(id)?.prunedAt;
    assert.ok(at != null && at >= before && at <= after, `release ${id} pruned at ${at}, between ${before} and ${after}`);
  }
  assert.equal(rows.has(r3), false, 'a dir without a row is removed and gets no row');
  for (const id of [r4, r5]) assert.equal(rows.get(id)?.prunedAt, null, `release ${id} was kept`);
});

test('prune: the active and previous releases are never removed, however old', async (t) => {
  const s = await setup(t, { keepReleases: 1 });
  // After a rollback the active release is old, and the previous one is older still.
  const [r1, r2, r3, r4] = await releasesOnDisk(s, ['previous', 'active', 'ready', 'ready']);
  assert.deepEqual(await s.releases.prune(r2, r1), [r3]);
  assert.deepEqual(await onDisk(s), [r1, r2, r4]);
  // Even with keep 0 and a failed active release (a config mistake), they stay.
  const zero = new ReleaseStore({ stateDir: s.stateDir, app: appConfig({ keepReleases: 0 }), store: s.store, logger: silentLogger() });
  await s.store.setReleaseState('shop', r2, 'failed');
  assert.deepEqual(await zero.prune(r2, r1), [r4]);
  assert.deepEqual(await onDisk(s), [r1, r2]);
});

test('prune: dirs without a store row count and can be pruned; builds in progress and strays are left alone', async (t) => {
  const s = await setup(t, { keepReleases: 1 });
  const [r1, r2, r3] = await releasesOnDisk(s, [null, 'ready', 'active']);
  await mkdir(join(s.releases.releasesDir, `.${s.releases.newReleaseId()}.partial`));
  await writeFile(join(s.releases.releasesDir, 'README'), 'not a release');
  assert.deepEqual(await s.releases.prune(r3, null), [r2, r1]);
  assert.equal(await s.store.getRelease('shop', r1), null, 'no row is made for a dir that had none');
  assert.deepEqual((await onDisk(s)).filter((n) => !n.startsWith('.')), [r3, 'README']);
  assert.equal((await onDisk(s)).filter((n) => n.startsWith('.')).length, 1);
});

test('prune: an app without releases prunes nothing', async (t) => {
  const s = await setup(t);
  assert.deepEqual(await s.releases.prune('20240101000000-abcdef', null), []);
});

test('prune: releases made in the same second are ordered by their creation time, not their random suffix', async (t) => {
  const s = await setup(t, { keepReleases: 1 });
  // Same second; the suffixes are chosen so that id order is the reverse of creation order.
  const older = '20240101000000-ffffff';
  const newer = '20240101000000-000000';
  const oldest = '20231231000000-abcdef';
  for (const [id, ms] of [[oldest, Date.UTC(2023, 11, 31)], [older, Date.UTC(2024, 0, 1, 0, 0, 0, 100)], [newer, Date.UTC(2024, 0, 1, 0, 0, 0, 900)]] as const) {
    await mkdir(join(s.releases.releasesDir, id), { recursive: true });
    await s.store.putRelease({ app: 'shop', id, createdAt: new Date(ms).toISOString(), state: 'ready', source: '/src', revision: 'r' });
  }
  // The active one is the oldest; keep 1 keeps the newest besides it, so the older of the same second goes.
  assert.deepEqual(await s.releases.prune(oldest, null), [older]);
  assert.deepEqual(await onDisk(s), [oldest, newer].sort());
});
