/**
 * Hostile sources against the real release store (real files, real tar and git, a real SQLite store):
 * symlinks out of a directory source, a REVISION symlink, a repository whose own config would run
 * commands, archive and many-file bombs against the release limits, and paths holding a `#`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, readFile, readdir, readlink, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import { fetchSource, parseSource } from '../../src/deploy/sources.ts';
import { resolveProcesses } from '../../src/deploy/procfile.ts';
import type { AppConfig } from '../../src/config/schema.ts';
import { appConfig, assertNothingLeft, git, releaseError, setup, tempDir, tree } from './release-fixtures.ts';

const exec = promisify(execFile);

// ---- symlinks (finding 6) -------------------------------------------------------------------

test('a directory source with a symlink out of it is refused naming the link; links inside are kept as links', async (t) => {
  const s = await setup(t);
  const outside = await tree(join(s.dir, 'outside'), { 'secret.txt': 'SECRET' });
  for (const [name, target] of [
    ['public', '/etc'],
    ['up', '../outside/secret.txt'],
    ['abs', join(outside, 'secret.txt')],
  ]) {
    const src = await tree(join(s.dir, `app-${name}`), { 'server.js': 'x' });
    await symlink(target, join(src, name));
    await assert.rejects(s.releases.prepare(src), releaseError(new RegExp(`source directory .*app-${name}: symlink "${name}" -> ".*" escapes the release dir`)), name);
    await assertNothingLeft(s);
  }
  // A link nested below a directory is found too.
  const nested = await tree(join(s.dir, 'app-nested'), { 'public/a.css': 'a' });
  await symlink('../../outside', join(nested, 'public', 'deep'));
  await assert.rejects(s.releases.prepare(nested), releaseError(/symlink "public\/deep" -> "\.\.\/\.\.\/outside" escapes/));
  await assertNothingLeft(s);
  // Links that stay inside are copied as links, not followed.
  const ok = await tree(join(s.dir, 'app-ok'), { 'public/a.css': 'a', 'lib/x.js': 'x' });
  await symlink('public', join(ok, 'static'));
  await symlink('../lib/x.js', join(ok, 'public', 'x.js'));
  const r = await s.releases.prepare(ok);
  assert.equal(await readlink(join(r.dir, 'static')), 'public');
  assert.equal(await readlink(join(r.dir, 'public', 'x.js')), '../lib/x.js');
  assert.equal(await readFile(join(r.dir, 'static', 'a.css'), 'utf8'), 'a');
});

test('a directory swapped for a symlink while the source is copied never brings outside files into the release', async (t) => {
  const s = await setup(t);
  const outside = await tree(join(s.dir, 'outside'), { 'z.txt': 'SECRET' });
  const src = await tree(join(s.dir, 'app'), { 'sub/z.txt': 'benign' });
  // A big file first in `sub`: while berth copies it, the source's owner swaps `sub` for a link out.
  await writeFile(join(src, 'sub', 'a.bin'), Buffer.alloc(64 * 1024 * 1024, 1));
  const dest = join(s.dir, 'release');
  let swapped = false;
  const poll = setInterval(() => {
    if (swapped) return;
    lstat(join(dest, 'sub', 'a.bin')).then(
      async () => {
        if (swapped) return;
        swapped = true;
        await rename(join(src, 'sub'), join(src, 'sub.was'));
        await symlink(outside, join(src, 'sub'));
      },
      () => {},
    );
  }, 1);
  t.after(() => clearInterval(poll));
  const result = await fetchSource(parseSource(src), dest, { exclude: [], scratch: join(s.dir, 'scratch') }).catch((err: unknown) => err);
  clearInterval(poll);
  assert.ok(swapped, 'the swap happened while the copy ran');
  // Listed as a regular file inside the source, opened as a file outside it: refused.
  releaseError(/"sub\/z\.txt" changed while it was copied/)(result);
  assert.notEqual(await readFile(join(dest, 'sub', 'z.txt'), 'utf8').catch(() => 'absent'), 'SECRET');
});

test('a copied directory source keeps permission bits but never set-user-ID or set-group-ID', async (t) => {
  const s = await setup(t);
  const src = await tree(join(s.dir, 'app'), { 'bin/tool': '#!/bin/sh\n', 'bin/plain': 'x' });
  await chmod(join(src, 'bin', 'tool'), 0o6755);
  await chmod(join(src, 'bin', 'plain'), 0o640);
  await chmod(join(src, 'bin'), 0o2775);
  const r = await s.releases.prepare(src);
  // Copied by root, a setuid file would be a setuid-root program in the release.
  assert.equal((await stat(join(r.dir, 'bin', 'tool'))).mode & 0o7777, 0o755);
  assert.equal((await stat(join(r.dir, 'bin', 'plain'))).mode & 0o7777, 0o640);
  assert.equal((await stat(join(r.dir, 'bin'))).mode & 0o7777, 0o775);
  assert.equal(await readFile(join(r.dir, 'bin', 'tool'), 'utf8'), '#!/bin/sh\n');
});

test('a REVISION symlink in the source never makes berth write outside the release (or through the link)', async (t) => {
  const s = await setup(t);
  const victim = join(s.dir, 'victim.txt');
  await writeFile(victim, 'precious');
  const src = await tree(join(s.dir, 'app'), { 'server.js': 'keep me' });
  await symlink(victim, join(src, 'REVISION'));
  await assert.rejects(s.releases.prepare(src), releaseError(/symlink "REVISION" -> ".*victim\.txt" escapes the release dir/));
  assert.equal(await readFile(victim, 'utf8'), 'precious');
  await assertNothingLeft(s);
  // A REVISION link to a file inside the release: the file keeps its content, REVISION becomes a file.
  await rm(join(src, 'REVISION'));
  await symlink('server.js', join(src, 'REVISION'));
  const r = await s.releases.prepare(src);
  assert.equal(await readFile(join(r.dir, 'server.js'), 'utf8'), 'keep me');
  assert.ok((await lstat(join(r.dir, 'REVISION'))).isFile());
  assert.equal(await readFile(join(r.dir, 'REVISION'), 'utf8'), `${r.revision}\n`);
  // The same through an archive: the link inside is allowed by the archive checks, and still not written through.
  const archive = join(s.dir, 'app.tar.gz');
  await exec('tar', ['-czf', archive, '-C', src, '.']);
  const fromTar = await s.releases.prepare(archive);
  assert.equal(await readFile(join(fromTar.dir, 'server.js'), 'utf8'), 'keep me');
  assert.ok((await lstat(join(fromTar.dir, 'REVISION'))).isFile());
});

// ---- git (finding 7) ------------------------------------------------------------------------

/** A repository whose own config, hooks and attributes would each create a marker file if run. */
async function hostileRepo(dir: string): Promise<{ repo: string; markers: string }> {
  const repo = join(dir, 'hostile');
  const markers = join(dir, 'markers');
  await mkdir(markers);
  await mkdir(repo);
  await git(repo, 'init', '-q');
  await tree(repo, { 'server.js': 'hello\n', '.gitattributes': '* filter=evil diff=evil\n' });
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-q', '-m', 'one');
  const touch = (name: string) => `touch ${join(markers, name)}`;
  const hooks = join(repo, '.git', 'hooks');
  for (const hook of ['post-checkout', 'post-merge', 'pre-push', 'reference-transaction', 'pre-auto-gc', 'post-index-change', 'fsmonitor-watchman']) {
    await writeFile(join(hooks, hook), `#!/bin/sh\n${touch(`hook-${hook}`)}\ncat >/dev/null 2>&1 || true\n`);
    await chmod(join(hooks, hook), 0o755);
  }
  await writeFile(
    join(repo, '.git', 'config'),
    (await readFile(join(repo, '.git', 'config'), 'utf8')) +
      [
        '[core]',
        `\tfsmonitor = "${touch('fsmonitor')}; echo"`,
        `\tsshCommand = "${touch('ssh')}; ssh"`,
        `\tpager = "${touch('pager')}; cat"`,
        `\talternateRefsCommand = "${touch('alternate-refs')}; true"`,
        '\thooksPath = .git/hooks',
        '[filter "evil"]',
        `\tsmudge = "${touch('smudge')}; cat"`,
        `\tclean = "${touch('clean')}; cat"`,
        '[diff "evil"]',
        `\ttextconv = "${touch('textconv')}; cat"`,
        '[credential]',
        `\thelper = "!${touch('credential')}; true"`,
        '[uploadpack]',
        `\tpackObjectsHook = "${touch('pack-objects-hook')}; exec"`,
        '[protocol]',
        '\tallow = always',
        '',
      ].join('\n'),
  );
  return { repo, markers };
}

test('a local repository whose own config, hooks and attributes run commands deploys without running any of them', async (t) => {
  const s = await setup(t);
  const { repo, markers } = await hostileRepo(s.dir);
  // The repository really is hostile: git run inside it, as berth used to, fires the filter driver.
  await exec('git', ['-C', repo, 'archive', '--format=tar', '-o', join(s.dir, 'probe.tar'), 'HEAD'], { env: { ...process.env, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' } });
  assert.ok((await readdir(markers)).includes('smudge'), 'the probe shows the filter runs when git works in the repository');
  await rm(markers, { recursive: true });
  await mkdir(markers);

  for (const source of [`${repo}#main`, `file://${repo}#main`, repo]) {
    const r = await s.releases.prepare(source);
    assert.equal(await readFile(join(r.dir, 'server.js'), 'utf8'), 'hello\n', `${source}: the file is exported as committed`);
    assert.deepEqual(await readdir(markers), [], `${source}: nothing the repository configures ran`);
  }
  assert.deepEqual((await readdir(s.releases.releasesDir)).filter((n) => n.startsWith('.')), [], 'no clone or config file is left');
});

test('git option injection is still refused', async (t) => {
  assert.throws(() => parseSource('/srv/repo#--upload-pack=touch /tmp/x'), releaseError(/bad ref/));
  assert.throws(() => parseSource('--upload-pack=x#main'), releaseError(/must not start with "-"/));
  const s = await setup(t);
  await assert.rejects(s.releases.prepare('ext::sh -c touch% /tmp/berth-ext-pwned#main'), releaseError(/git repository .* does not exist|git clone of .* failed/));
  await assert.rejects(stat('/tmp/berth-ext-pwned'), { code: 'ENOENT' });
});

// ---- limits and `#` paths (finding 16) ------------------------------------------------------

test('an archive replaced between its check and its extraction: berth extracts exactly what it checked', async (t) => {
  const s = await setup(t);
  const archive = join(s.dir, 'app.tar.gz');
  const evil = join(s.dir, 'evil.tar.gz');
  await exec('tar', ['-czf', archive, '-C', await tree(join(s.dir, 'good'), { 'a.txt': 'checked' }), '.']);
  await exec('tar', ['-czf', evil, '-C', await tree(join(s.dir, 'bad'), { 'a.txt': 'EVIL' }), '.']);
  // The archive's owner strikes at the worst moment: as berth runs its second listing (a real tar, found
  // first on PATH by a wrapper that swaps the archive at the source path, then runs tar).
  const realTar = (await exec('sh', ['-c', 'command -v tar'])).stdout.trim();
  const bin = await tree(join(s.dir, 'bin'), { tar: `#!/bin/sh\nif [ "$1" = "-tzf" ] && [ -e '${evil}' ]; then mv '${evil}' '${archive}'; fi\nexec '${realTar}' "$@"\n` });
  await chmod(join(bin, 'tar'), 0o755);
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path}`;
  t.after(() => {
    process.env.PATH = path;
  });
  const r = await s.releases.prepare(archive);
  process.env.PATH = path;
  assert.equal(await stat(evil).catch(() => null), null, 'the swap happened');
  assert.equal(await readFile(join(r.dir, 'a.txt'), 'utf8'), 'checked');
  assert.deepEqual((await readdir(s.releases.releasesDir)).filter((n) => n.startsWith('.')), [], 'no copy left behind');
});

test('an archive bomb and a many-file archive fail at prepare naming the limit, and leave nothing', async (t) => {
  const s = await setup(t, { maxReleaseBytes: 1024 * 1024, maxReleaseFiles: 50 } as Partial<AppConfig>);
  // 20 MiB of zeros in one file: a few KB compressed.
  const bombSrc = join(s.dir, 'bomb-src');
  await mkdir(bombSrc);
  await writeFile(join(bombSrc, 'zeros.bin'), Buffer.alloc(20 * 1024 * 1024));
  const bomb = join(s.dir, 'bomb.tar.gz');
  await exec('tar', ['-czf', bomb, '-C', bombSrc, '.']);
  assert.ok((await stat(bomb)).size < 100 * 1024, 'the bomb is small');
  await assert.rejects(s.releases.prepare(bomb), releaseError(/source archive .*bomb\.tar\.gz holds more than 1 MiB: over the limit max_release_size \(1048576 bytes\)/));
  await assertNothingLeft(s);
  // An archive that is itself far larger than any release within the limits is refused before berth
  // copies it (it lists and extracts a private copy).
  const hugeSrc = join(s.dir, 'huge-src');
  await mkdir(hugeSrc);
  await writeFile(join(hugeSrc, 'noise.bin'), randomBytes(3 * 1024 * 1024));
  const huge = join(s.dir, 'huge.tar.gz');
  await exec('tar', ['-czf', huge, '-C', hugeSrc, '.']);
  await assert.rejects(s.releases.prepare(huge), releaseError(/source archive .*huge\.tar\.gz is \d+ bytes, larger than the archive of any release within the limits: over the limit max_release_size \(1048576 bytes\)/));
  await assertNothingLeft(s);

  const manySrc = join(s.dir, 'many-src');
  await mkdir(manySrc);
  for (let i = 0; i < 200; i++) await writeFile(join(manySrc, `f${i}.txt`), '');
  const many = join(s.dir, 'many.tar.gz');
  await exec('tar', ['-czf', many, '-C', manySrc, '.']);
  await assert.rejects(s.releases.prepare(many), releaseError(/source archive .*many\.tar\.gz holds more than 50 files and directories: over the limit max_release_files \(50\)/));
  await assertNothingLeft(s);

  // The same trees as directories and as git repositories.
  await assert.rejects(s.releases.prepare(bombSrc), releaseError(/source directory .*bomb-src holds more than 1 MiB: over the limit max_release_size/));
  await assertNothingLeft(s);
  await assert.rejects(s.releases.prepare(manySrc), releaseError(/source directory .*many-src holds more than 50 files and directories: over the limit max_release_files/));
  await assertNothingLeft(s);
  for (const src of [bombSrc, manySrc]) {
    await git(src, 'init', '-q');
    await git(src, 'add', '-A');
    await git(src, 'commit', '-q', '-m', 'big');
  }
  await assert.rejects(s.releases.prepare(`${bombSrc}#main`), releaseError(/git .*bomb-src#main holds more than 1 MiB: over the limit max_release_size/));
  await assertNothingLeft(s);
  await assert.rejects(s.releases.prepare(`${manySrc}#main`), releaseError(/git .*many-src#main holds more than 50 files and directories: over the limit max_release_files/));
  await assertNothingLeft(s);

  // Within the limits, the same kinds of source deploy.
  const small = await tree(join(s.dir, 'small'), { 'a.txt': 'a', 'b/c.txt': 'c' });
  await s.releases.prepare(small);
});

test('an archive bomb is stopped early: the listing is cut at the first entry over the limit', async (t) => {
  const s = await setup(t, { maxReleaseBytes: 1024 * 1024 } as Partial<AppConfig>);
  // One header claiming 8 GiB, then nothing: a listing that read on would fail on the truncated body,
  // so the limit error proves the check happened at the header.
  const header = Buffer.alloc(512);
  const put = (text: string, at: number) => header.write(text, at, 'latin1');
  put('huge.bin', 0);
  put('0000644\0', 100);
  put('0000000\0', 108);
  put('0000000\0', 116);
  put('100000000000', 124);
  put('00000000000\0', 136);
  put('        ', 148);
  put('0', 156);
  put('ustar\0' + '00', 257);
  let sum = 0;
  for (const b of header) sum += b;
  put(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  const archive = join(s.dir, 'claim.tar.gz');
  await writeFile(archive, gzipSync(Buffer.concat([header, Buffer.alloc(4096)])));
  await assert.rejects(s.releases.prepare(archive), releaseError(/holds more than 1 MiB: over the limit max_release_size/));
  await assertNothingLeft(s);
});

test('a source path that exists on disk is a directory or an archive even with a "#" in it', async (t) => {
  const s = await setup(t);
  const dir = await tree(join(s.dir, 'app#v2'), { 'server.js': 'from a directory with a hash' });
  assert.deepEqual(parseSource(dir), { kind: 'directory', path: dir });
  const r = await s.releases.prepare(dir);
  assert.equal(await readFile(join(r.dir, 'server.js'), 'utf8'), 'from a directory with a hash');
  assert.equal(r.source, dir);

  const archive = join(s.dir, 'build#42.tar.gz');
  await exec('tar', ['-czf', archive, '-C', dir, '.']);
  assert.deepEqual(parseSource(archive), { kind: 'archive', path: archive });
  const a = await s.releases.prepare(archive);
  assert.equal(await readFile(join(a.dir, 'server.js'), 'utf8'), 'from a directory with a hash');
  // Relative, from the working directory given.
  assert.deepEqual(parseSource('app#v2', s.dir), { kind: 'directory', path: dir });
  // A path that does not exist keeps meaning a git ref.
  assert.deepEqual(parseSource(join(s.dir, 'repo#main')), { kind: 'git', url: join(s.dir, 'repo'), ref: 'main', local: true });
});

test('a Procfile linked out of the release is not read', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await mkdir(release);
  await writeFile(join(dir, 'Procfile.outside'), 'web: touch /tmp/pwned\n');
  await symlink(join(dir, 'Procfile.outside'), join(release, 'Procfile'));
  await assert.rejects(resolveProcesses(appConfig(), release), (err: unknown) => err instanceof BerthError && /has no Procfile/.test(err.message));
  await rm(join(release, 'Procfile'));
  await writeFile(join(release, 'Procfile.real'), 'web: node server.js\n');
  await symlink('Procfile.real', join(release, 'Procfile'));
  assert.equal((await resolveProcesses(appConfig(), release)).processes.web.command, 'node server.js', 'a link inside the release is fine');
  // One far larger than any Procfile is not read into the gateway's memory.
  await rm(join(release, 'Procfile'));
  await writeFile(join(release, 'Procfile'), `web: node server.js\n${'#'.repeat(2 * 1024 * 1024)}\n`);
  await assert.rejects(resolveProcesses(appConfig(), release), (err: unknown) => err instanceof BerthError && /has no Procfile \(a regular file inside the release, at most 1 MiB\)/.test(err.message));
});

test('a local repository owned by another user deploys, its config still unused', { skip: process.getuid?.() === 0 ? false : 'needs root to give the repository to another user' }, async (t) => {
  const s = await setup(t);
  const { repo, markers } = await hostileRepo(s.dir);
  await exec('chown', ['-R', '65534:65534', repo]);
  const r = await s.releases.prepare(`${repo}#main`);
  assert.equal(await readFile(join(r.dir, 'server.js'), 'utf8'), 'hello\n');
  assert.deepEqual(await readdir(markers), []);
});
