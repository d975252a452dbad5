/**
 * What the proxy reads from a release stays in the release, over real sockets: a static directory that
 * is a symlink out, per-file links (also swapped in after a first request), app pages linked out, and
 * the redirect to a directory's slash, which must never name another host.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RouteConfig } from '../../src/config/schema.ts';
import { appConfig, backend, entry, fetchRaw, okHandler, refusedAddress, route, startProxy, TestGeneration } from './fixtures.ts';

function staticRoute(path: string, dir: string): RouteConfig {
  return { path, to: null, static: dir, cache: null, cors: null, buffering: true, affinity: null };
}

async function base(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-contain-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Sends one request with the exact target bytes and returns the raw response text. */
function raw(port: number, target: string): Promise<{ status: number; text: string; location: string | null }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let text = '';
    sock.on('data', (c) => (text += c.toString('latin1')));
    sock.on('end', () => {
      const m = /\r\nlocation: ([^\r]*)\r\n/i.exec(text);
      resolve({ status: Number(text.slice(9, 12)), text, location: m ? m[1] : null });
    });
    sock.on('error', reject);
    sock.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  });
}

const HOSTNAME = (await readFile('/etc/hostname', 'utf8').catch(() => '')).trim();

test('a static directory that is itself a symlink out of the release serves nothing from it', async (t) => {
  const dir = await base(t);
  const release = join(dir, 'release');
  await mkdir(join(release, 'assets'), { recursive: true });
  await writeFile(join(release, 'assets', 'ok.css'), 'ok');
  await symlink('/etc', join(release, 'public'));
  await symlink('../../outside', join(release, 'assets', 'up'));
  await mkdir(join(dir, 'outside'));
  await writeFile(join(dir, 'outside', 'secret.txt'), 'SECRET');
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: release });
  const be = await backend(t, okHandler('app'));
  gen.addPool('web', 1, [be.address]);
  const { url, port } = await startProxy(t, [
    entry(appConfig('shop', { routes: [route('/app'), staticRoute('/etc', 'public'), staticRoute('/assets', 'assets'), staticRoute('/', 'public')] }), gen),
  ]);
  for (const target of ['/etc/passwd', '/etc/hostname', '/passwd', '/hostname', '/assets/up/secret.txt']) {
    const r = await raw(port, target);
    assert.equal(r.status, 404, `${target} -> ${r.status}`);
    assert.ok(!r.text.includes('root:') && !r.text.includes('SECRET'), `${target} leaked a file`);
    if (HOSTNAME.length > 3) assert.ok(!r.text.includes(HOSTNAME), `${target} leaked /etc/hostname`);
  }
  assert.equal((await fetchRaw(`${url}/assets/ok.css`)).text, 'ok', 'a static dir inside the release still serves');
});

test('a file swapped for a symlink out after it was served is not served through the link', async (t) => {
  const dir = await base(t);
  const release = join(dir, 'release');
  await mkdir(join(release, 'public'), { recursive: true });
  await writeFile(join(release, 'public', 'a.txt'), 'first');
  await writeFile(join(dir, 'secret.txt'), 'SECRET');
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: release });
  const { url } = await startProxy(t, [entry(appConfig('shop', { routes: [staticRoute('/', 'public')] }), gen)]);
  assert.equal((await fetchRaw(`${url}/a.txt`)).text, 'first');
  await symlink(join(dir, 'secret.txt'), join(release, 'public', 'a.tmp'));
  await rename(join(release, 'public', 'a.tmp'), join(release, 'public', 'a.txt'));
  const r = await fetchRaw(`${url}/a.txt`);
  assert.equal(r.status, 404);
  assert.ok(!r.text.includes('SECRET'));
  // And a link swapped in for a directory on the way.
  await mkdir(join(release, 'public', 'sub'));
  await writeFile(join(release, 'public', 'sub', 'secret.txt'), 'inside');
  assert.equal((await fetchRaw(`${url}/sub/secret.txt`)).text, 'inside');
  await rm(join(release, 'public', 'sub'), { recursive: true });
  await symlink(dir, join(release, 'public', 'sub'));
  const through = await fetchRaw(`${url}/sub/secret.txt`);
  assert.equal(through.status, 404);
  assert.ok(!through.text.includes('SECRET'));
});

test('app pages (error, maintenance, read-only) linked out of the release are not served: the built-in page is', async (t) => {
  const dir = await base(t);
  const release = join(dir, 'release');
  await mkdir(release);
  await writeFile(join(dir, 'outside.html'), '<h1>SECRET PAGE</h1>');
  await symlink(join(dir, 'outside.html'), join(release, 'error.html'));
  await symlink('/etc/hostname', join(release, 'host.html'));
  await symlink(join(dir, 'outside.html'), join(release, 'maintenance.html'));
  await symlink('../outside.html', join(release, 'readonly.html'));
  const dead = new TestGeneration({ id: 'a#1', app: 'a', releaseId: 'r1', releaseDir: release });
  dead.addPool('web', 1, [await refusedAddress()]);
  const host = new TestGeneration({ id: 'h#1', app: 'h', releaseId: 'r1', releaseDir: release });
  host.addPool('web', 1, [await refusedAddress()]);
  const be = await backend(t, okHandler('app'));
  const up = new TestGeneration({ id: 'm#1', app: 'm', releaseId: 'r1', releaseDir: release });
  up.addPool('web', 1, [be.address]);
  const up2 = new TestGeneration({ id: 'r#1', app: 'r', releaseId: 'r1', releaseDir: release });
  up2.addPool('web', 1, [be.address]);
  const pages = { maintenance: 'maintenance.html', readOnly: 'readonly.html', error: 'error.html' };
  const { url } = await startProxy(t, [
    entry(appConfig('a', { hosts: ['a.test'], pages }), dead),
    entry(appConfig('h', { hosts: ['h.test'], pages: { ...pages, error: 'host.html' } }), host),
    entry(appConfig('m', { hosts: ['m.test'], pages }), up, { mode: 'maintenance' }),
    entry(appConfig('r', { hosts: ['r.test'], pages }), up2, { mode: 'read-only' }),
  ]);
  const cases: [string, string, number][] = [
    ['a.test', 'GET', 502],
    ['h.test', 'GET', 502],
    ['m.test', 'GET', 503],
    ['r.test', 'POST', 503],
  ];
  for (const [hostName, method, status] of cases) {
    // Twice: the first read and the cached answer.
    for (let i = 0; i < 2; i++) {
      const r = await fetchRaw(url, { method, headers: { host: hostName } });
      assert.equal(r.status, status, hostName);
      assert.ok(!r.text.includes('SECRET PAGE'), `${hostName} served the linked page`);
      if (HOSTNAME.length > 3) assert.ok(!r.text.includes(HOSTNAME), `${hostName} served /etc/hostname`);
      assert.match(r.text, /<!doctype html>/, `${hostName} gets the built-in page`);
    }
  }
});

test('an app page too large to hold in memory is not read: the built-in page is sent', async (t) => {
  const dir = await base(t);
  const release = join(dir, 'release');
  await mkdir(release);
  // The release's content is the app's: a page of gigabytes must not become gateway memory.
  await writeFile(join(release, 'error.html'), `<h1>HUGE PAGE</h1>${'x'.repeat(2 * 1024 * 1024)}`);
  await writeFile(join(release, 'small.html'), '<h1>SMALL PAGE</h1>');
  const big = new TestGeneration({ id: 'a#1', app: 'a', releaseId: 'r1', releaseDir: release });
  big.addPool('web', 1, [await refusedAddress()]);
  const small = new TestGeneration({ id: 's#1', app: 's', releaseId: 'r1', releaseDir: release });
  small.addPool('web', 1, [await refusedAddress()]);
  const { url } = await startProxy(t, [
    entry(appConfig('a', { hosts: ['a.test'], pages: { maintenance: null, readOnly: null, error: 'error.html' } }), big),
    entry(appConfig('s', { hosts: ['s.test'], pages: { maintenance: null, readOnly: null, error: 'small.html' } }), small),
  ]);
  const r = await fetchRaw(url, { headers: { host: 'a.test' } });
  assert.equal(r.status, 502);
  assert.ok(!r.text.includes('HUGE PAGE'), 'the oversized page was not sent');
  assert.match(r.text, /<!doctype html>/);
  const ok = await fetchRaw(url, { headers: { host: 's.test' } });
  assert.equal(ok.status, 502);
  assert.match(ok.text, /SMALL PAGE/, 'a page of ordinary size is still used');
});

test('the redirect to a directory slash never starts with // (another host to a browser)', async (t) => {
  const dir = await base(t);
  const release = join(dir, 'release');
  await mkdir(join(release, 'public', 'sub'), { recursive: true });
  await mkdir(join(release, 'public', 'evil.example'), { recursive: true });
  await writeFile(join(release, 'public', 'sub', 'index.html'), 'sub index');
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: release });
  const { port } = await startProxy(t, [entry(appConfig('shop', { routes: [staticRoute('/static', 'public'), staticRoute('/', 'public')] }), gen)]);
  const cases: [string, string][] = [
    ['//sub', '/sub/'],
    ['///sub', '/sub/'],
    ['//evil.example', '/evil.example/'],
    ['//evil.example?x=1', '/evil.example/?x=1'],
    ['/sub', '/sub/'],
    ['/static//sub', '/static/sub/'],
    ['/static/sub?a=b', '/static/sub/?a=b'],
  ];
  for (const [target, location] of cases) {
    const r = await raw(port, target);
    assert.equal(r.status, 301, `${target} -> ${r.status}`);
    assert.equal(r.location, location, target);
    assert.ok(!/^\/[/\\]/.test(r.location!), `${target} redirected to ${r.location}`);
  }
  assert.equal((await raw(port, '//sub/')).status, 200);
});
