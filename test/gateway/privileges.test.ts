/**
 * Finding 2 of issue #10 (privilege separation and environment isolation) and the file-mode half of
 * finding 5, over a real gateway and real app processes.
 *
 * As root (CI): apps run as their own users, so a deployer limited to one app cannot reach the control
 * socket from that app's processes or from `berth run`; the store, logs and other apps' releases are
 * closed to them. The users are `nobody` and numeric ids no passwd entry names (40001...), so nothing
 * is added to the system. App processes run a copy of this Node in a world-readable temp dir, so they
 * work whatever the checkout's permissions (a CI clone in a private home directory). Each test skips,
 * saying why, when not root.
 *
 * Not root: `berth check` and `berth start` refuse control.permissions they cannot enforce, unless
 * permissions_unenforced_ok. Those run the CLI as `nobody` when the tests run as root.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { chmod, chown, cp, lstat, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN, ROOT, RUNNING_AS_ROOT, http, runCli, spawnGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';
import { lookupUser, resolveAppUser } from '../../src/supervisor/app-user.ts';
import { appEnv, PASS_THROUGH_ENV } from '../../src/supervisor/app-env.ts';
import { appConfig } from '../proxy/fixtures.ts';
import type { AppConfig } from '../../src/config/schema.ts';
import YAML from 'yaml';

const PROBE_APP = join(ROOT, 'test/fixtures/apps/probe');
const NODE = RUNNING_AS_ROOT ? publicNode() : process.execPath;
const PROBE_COMMAND = `"${NODE}" server.mjs`;
const NOBODY = lookupUser('nobody');

/**
 * A copy of this Node that any user can run: the checkout (and the Node in its node_modules) may sit
 * in a directory other users cannot enter. Removed when the test process exits.
 */
function publicNode(): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-node-'));
  chmodSync(dir, 0o755);
  const copy = join(dir, 'node');
  copyFileSync(process.execPath, copy);
  chmodSync(copy, 0o755);
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return copy;
}

/** Why `uid` cannot run `node` (and, with `file`, read that file), or false when it can. */
function cannotRun(uid: number, gid: number, node: string, file?: string): string | false {
  const script = file === undefined ? '0' : `require('fs').readFileSync(${JSON.stringify(file)})`;
  const r = spawnSync(node, ['-e', script], { uid, gid, stdio: 'ignore' });
  if (r.status === 0) return false;
  return file === undefined ? `uid ${uid} cannot exec ${node}` : `uid ${uid} cannot exec ${node} or read ${file} (a private checkout?)`;
}

function rootSkip(...uids: number[]): string | false {
  if (!RUNNING_AS_ROOT) return 'needs root: berth switches app users only when it runs as root';
  if (!NOBODY) return 'no user "nobody" on this system';
  for (const uid of uids) {
    const why = cannotRun(uid, uid, NODE);
    if (why) return why;
  }
  return false;
}

const NOBODY_UID = NOBODY?.uid ?? 65534;
const rootOnly = rootSkip(NOBODY_UID, 40001, 40002);

async function probeSource(dir: string, name: string): Promise<string> {
  const dest = join(dir, name);
  await cp(PROBE_APP, dest, { recursive: true });
  return dest;
}

test('as root: a deployer limited to shop cannot reach the control socket from shop or from berth run; the store, logs and other releases are closed', { skip: rootOnly }, async (t) => {
  const dir = await tempDir(t, 'berth-priv-');
  await chmod(dir, 0o755);
  const shopSrc = await probeSource(dir, 'shop-src');
  const blogSrc = await probeSource(dir, 'blog-src');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    control: { permissions: { default: { deployer: ['shop'] } } },
    apps: {
      shop: {
        hosts: ['shop.test'],
        source: shopSrc,
        user: 'nobody',
        build: 'id -u > build-uid.txt',
        env: { SHOP_ONLY: 'shop' },
        processes: {
          web: { command: PROBE_COMMAND, env: { WEB_ONLY: 'web' } },
          worker: { command: `${PROBE_COMMAND} worker`, heartbeat_timeout: '1s' },
        },
        health: { path: '/up' },
      },
      blog: {
        hosts: ['blog.test'],
        source: blogSrc,
        user: 40002,
        group: 40002,
        listen: 'socket',
        env: { BLOG_SECRET: 'blog-only' },
        processes: { web: { command: PROBE_COMMAND } },
        health: { path: '/up' },
      },
    },
  });
  const gw = await spawnGateway(t, file, {
    // The operator's secrets and one app's env written as a gateway override: no app may see them.
    env: { BERTH_TOKEN: 'operator-token', BERTH_APPS__BLOG__ENV__ALPHA_DB_PASSWORD: 'hunter2', SOME_GATEWAY_VAR: 'x' },
  });
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 60_000, message: 'both apps ready' });
  const stateDir = join(dir, 'state');
  const status = await gw.api('/v1/status');
  const shopRelease: string = status.apps.find((a: { name: string }) => a.name === 'shop').activeRelease;
  const blogRelease: string = status.apps.find((a: { name: string }) => a.name === 'blog').activeRelease;
  const blogReleaseDir = join(stateDir, 'apps/blog/releases', blogRelease);
  const tries = [
    `socket:${gw.socket}`,
    `read:${join(stateDir, 'berth.db')}`,
    `list:${stateDir}`,
    `list:${blogReleaseDir}`,
    `read:${join(blogReleaseDir, 'server.mjs')}`,
    `list:${join(stateDir, 'apps/blog/logs')}`,
    `list:${join(stateDir, 'apps/shop/logs')}`,
    `list:${join(stateDir, 'apps/blog/shared')}`,
    `list:${join(stateDir, 'apps/shop/releases', shopRelease)}`,
  ];
  const query = tries.map((x) => `try=${encodeURIComponent(x)}`).join('&');

  // shop's own process: runs as nobody, without root's groups.
  const fromWeb = (await http({ port: gw.port }, { host: 'shop.test', path: `/probe?${query}` })).json();
  assert.equal(fromWeb.uid, NOBODY_UID);
  assert.equal(fromWeb.gid, NOBODY!.gid);
  assert.deepEqual(fromWeb.groups.filter((g: number) => g !== NOBODY!.gid), [], 'no supplementary group of root is kept');
  assert.deepEqual(fromWeb.reach, {
    [`socket:${gw.socket}`]: 'EACCES',
    [`read:${join(stateDir, 'berth.db')}`]: 'EACCES',
    [`list:${stateDir}`]: 'EACCES',
    [`list:${blogReleaseDir}`]: 'EACCES',
    [`read:${join(blogReleaseDir, 'server.mjs')}`]: 'EACCES',
    [`list:${join(stateDir, 'apps/blog/logs')}`]: 'EACCES',
    [`list:${join(stateDir, 'apps/shop/logs')}`]: 'EACCES',
    [`list:${join(stateDir, 'apps/blog/shared')}`]: 'EACCES',
    [`list:${join(stateDir, 'apps/shop/releases', shopRelease)}`]: 'listed',
  });

  // A one-off run in shop (what a deployer limited to shop may start): the same user, the same walls.
  const run = await runCli(['run', 'shop', '--socket', gw.socket, '--', NODE, 'server.mjs', 'probe', ...tries]);
  assert.equal(run.code, 0, run.stderr);
  const fromRun = JSON.parse(run.stdout.trim().split('\n').at(-1)!);
  assert.equal(fromRun.uid, NOBODY_UID);
  assert.equal(fromRun.reach[`socket:${gw.socket}`], 'EACCES');
  assert.equal(fromRun.reach[`read:${join(stateDir, 'berth.db')}`], 'EACCES');
  assert.equal(fromRun.reach[`list:${blogReleaseDir}`], 'EACCES');
  assert.equal(fromRun.env.BERTH_TASK, 'run');
  assert.equal(fromRun.env.HOME, NOBODY!.home);

  // The build command ran as nobody too, in a release that belongs to nobody.
  const shopDir = join(stateDir, 'apps/shop/releases', shopRelease);
  assert.equal((await readFile(join(shopDir, 'build-uid.txt'), 'utf8')).trim(), String(NOBODY_UID));
  assert.equal((await stat(shopDir)).uid, NOBODY_UID);
  assert.equal((await stat(join(shopDir, 'server.mjs'))).uid, NOBODY_UID);
  assert.equal((await stat(shopDir)).mode & 0o777, 0o700);

  // blog: a numeric uid and gid no passwd names; its socket lives in a directory of its own.
  const fromBlog = (await http({ port: gw.port }, { host: 'blog.test', path: `/probe?try=${encodeURIComponent(`socket:${gw.socket}`)}&try=${encodeURIComponent(`list:${shopDir}`)}` })).json();
  assert.equal(fromBlog.uid, 40002);
  assert.equal(fromBlog.gid, 40002);
  assert.equal(fromBlog.reach[`socket:${gw.socket}`], 'EACCES');
  assert.equal(fromBlog.reach[`list:${shopDir}`], 'EACCES');
  assert.ok(fromBlog.env.BERTH_SOCKET.startsWith(join(stateDir, 'sockets', 'blog') + '/'), fromBlog.env.BERTH_SOCKET);
  const blogSockets = await lstat(join(stateDir, 'sockets', 'blog'));
  assert.equal(blogSockets.uid, 40002);
  assert.equal(blogSockets.mode & 0o777, 0o700);

  // Environment isolation: the pass-through list, the app's env, the type's env, BERTH_*; nothing else.
  const shopEnv = fromWeb.env;
  assert.equal(shopEnv.SHOP_ONLY, 'shop');
  assert.equal(shopEnv.WEB_ONLY, 'web');
  assert.equal(shopEnv.HOME, NOBODY!.home);
  assert.equal(shopEnv.USER, 'nobody');
  assert.equal(shopEnv.LOGNAME, 'nobody');
  assert.equal(shopEnv.BERTH_APP, 'shop');
  for (const key of Object.keys(shopEnv)) {
    const allowed = PASS_THROUGH_ENV.includes(key) || key.startsWith('LC_') || ['HOME', 'USER', 'LOGNAME', 'SHOP_ONLY', 'WEB_ONLY', 'PORT', 'PWD', 'OLDPWD', 'SHLVL'].includes(key) || /^BERTH_(APP|RELEASE|PROCESS|INSTANCE|DB_POOL_SIZE)$/.test(key);
    assert.ok(allowed, `shop sees ${key}`);
  }
  assert.equal(shopEnv.BERTH_TOKEN, undefined);
  assert.equal(shopEnv.SOME_GATEWAY_VAR, undefined);
  assert.equal(shopEnv.BERTH_APPS__BLOG__ENV__ALPHA_DB_PASSWORD, undefined);
  assert.equal(shopEnv.ALPHA_DB_PASSWORD, undefined);
  assert.equal(shopEnv.BLOG_SECRET, undefined);
  assert.equal(fromRun.env.BERTH_TOKEN, undefined);
  assert.equal(fromRun.env.BLOG_SECRET, undefined);
  assert.equal(fromRun.env.BERTH_APPS__BLOG__ENV__ALPHA_DB_PASSWORD, undefined);
  // blog gets its own env, the override included, and none of the gateway's BERTH_* variables.
  assert.equal(fromBlog.env.BLOG_SECRET, 'blog-only');
  assert.equal(fromBlog.env.ALPHA_DB_PASSWORD, 'hunter2');
  assert.equal(fromBlog.env.BERTH_APPS__BLOG__ENV__ALPHA_DB_PASSWORD, undefined);
  assert.equal(fromBlog.env.BERTH_TOKEN, undefined);
  assert.equal(fromBlog.env.SHOP_ONLY, undefined);
  assert.equal(fromBlog.env.HOME, '/', 'a uid without a passwd entry has / as its home');

  // The worker touches its heartbeat file as nobody: it is never restarted for silence.
  await new Promise((r) => setTimeout(r, 1_500));
  const worker = (await gw.api('/v1/apps/shop')).generations[0].instances.find((i: { process: string }) => i.process === 'worker');
  assert.equal(worker.state, 'ready');
  assert.equal(worker.restarts, 0, 'the heartbeat file is usable by the app user');
  const beats = (await readdir(join(stateDir, 'apps/shop/run'))).filter((n) => n.startsWith('worker.'));
  assert.equal(beats.length, 1);
  assert.equal((await lstat(join(stateDir, 'apps/shop/run', beats[0]))).uid, NOBODY_UID);

  // Modes (finding 5): the store 0600, the state dir only passable, per-app dirs as state-access.ts says.
  const mode = async (p: string) => (await stat(p)).mode & 0o777;
  assert.equal(await mode(join(stateDir, 'berth.db')), 0o600);
  for (const suffix of ['-wal', '-shm']) {
    const p = join(stateDir, `berth.db${suffix}`);
    if ((await lstat(p).catch(() => null)) !== null) assert.equal(await mode(p), 0o600, p);
  }
  assert.equal(await mode(stateDir), 0o711);
  assert.equal(await mode(join(stateDir, 'apps')), 0o711);
  assert.equal(await mode(join(stateDir, 'apps/shop')), 0o711);
  assert.equal(await mode(join(stateDir, 'apps/shop/logs')), 0o700);
  assert.equal(await mode(join(stateDir, 'apps/shop/releases')), 0o711);
  assert.equal(await mode(gw.socket), 0o600);
  for (const name of await readdir(join(stateDir, 'apps/shop/logs'))) {
    assert.equal((await stat(join(stateDir, 'apps/shop/logs', name))).uid, 0, `${name} belongs to root`);
  }
});

test('as root: an app without user runs as its source owner; a root-owned source falls back to default_user', { skip: rootSkip(NOBODY_UID, 40001) }, async (t) => {
  const dir = await tempDir(t, 'berth-priv-');
  await chmod(dir, 0o755);
  const owned = await probeSource(dir, 'owned-src');
  const rootOwned = await probeSource(dir, 'root-src');
  for (const p of [owned, join(owned, 'server.mjs')]) await chown(p, 40001, 40001);
  // Not writeConfig's `user: root`: these apps must take the default.
  const file = join(dir, 'berth.yaml');
  await writeFile(
    file,
    YAML.stringify({
      state_dir: 'state',
      listen: ['127.0.0.1:0'],
      log_levels: { root: 'warn' },
      apps: {
        owned: { hosts: ['owned.test'], source: owned, processes: { web: { command: PROBE_COMMAND } }, health: { path: '/up' } },
        fallback: { hosts: ['fallback.test'], source: rootOwned, processes: { web: { command: PROBE_COMMAND } }, health: { path: '/up' } },
        explicit: { hosts: ['root.test'], source: rootOwned, user: 'root', processes: { web: { command: PROBE_COMMAND } }, health: { path: '/up' } },
      },
    }),
  );
  const gw = await spawnGateway(t, file, { rootUser: false });
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 60_000, message: 'apps ready' });
  const who = async (host: string) => (await http({ port: gw.port }, { host, path: '/' })).json();
  const a = await who('owned.test');
  assert.equal(a.uid, 40001, 'the source owner');
  assert.equal(a.gid, 40001, "the source's group: no passwd entry gives another");
  const b = await who('fallback.test');
  assert.equal(b.uid, NOBODY_UID, 'root owns the source: default_user (nobody)');
  const c = await who('root.test');
  assert.equal(c.uid, 0, 'root only when written');
});

test('resolveAppUser: source owner, root -> default_user, unknown names are errors naming the key', { skip: RUNNING_AS_ROOT ? false : 'needs root to chown a source' }, async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  const app = (over: Partial<AppConfig>): AppConfig => appConfig('shop', { user: null, group: null, source: src, ...over });
  assert.equal(resolveAppUser(app({}), 'nobody', true).name, 'nobody');
  assert.equal(resolveAppUser(app({}), 'nobody', true).from, 'default-user');
  await chown(src, 40005, 40006);
  const owner = resolveAppUser(app({}), 'nobody', true);
  assert.deepEqual([owner.uid, owner.gid, owner.from, owner.switches], [40005, 40006, 'source-owner', true]);
  assert.equal(resolveAppUser(app({ source: 'https://example.com/x.git#main' }), 'nobody', true).from, 'default-user');
  assert.equal(resolveAppUser(app({ user: 'root' }), 'nobody', true).switches, false);
  assert.throws(() => resolveAppUser(app({ user: 'no-such-user-b3rth' }), 'nobody', true), /apps\.shop\.user: no user named "no-such-user-b3rth"/);
  assert.throws(() => resolveAppUser(app({ user: 'nobody', group: 'no-such-group-b3rth' }), 'nobody', true), /apps\.shop\.group: no group named "no-such-group-b3rth"/);
  assert.throws(() => resolveAppUser(app({ source: null }), 'no-such-user-b3rth', true), /default_user .*no user named "no-such-user-b3rth"/);
  assert.throws(() => resolveAppUser(app({ source: null }), 'root', true), /default_user root is root/);
  // Not root: everything runs as the gateway's user, whatever the config says.
  assert.equal(resolveAppUser(app({ user: 'no-such-user-b3rth' }), 'nobody', false).from, 'gateway');
});

test('appEnv: only the pass-through list, then env, process env and BERTH_* (which the app cannot override)', () => {
  const app = appConfig('shop', { env: { A: 'app', PORT: '1', HOME: '/app-home', BERTH_APP: 'evil' } });
  const user = { name: 'web', uid: 1000, gid: 1000, group: 'web', home: '/home/web', switches: true, from: 'user' as const };
  const env = appEnv(
    { PATH: '/bin', LANG: 'C.UTF-8', LC_TIME: 'C', TZ: 'UTC', TMPDIR: '/root/tmp', BERTH_TOKEN: 't', BERTH_APPS__X__ENV__Y: 'z', HOME: '/root', USER: 'root', SECRET: 's' },
    { app, user, process: { name: 'web', env: { A: 'web', B: 'web' } } as never, vars: { BERTH_APP: 'shop', PORT: '8000', BERTH_HEARTBEAT_FILE: undefined } },
  );
  assert.deepEqual(env, { PATH: '/bin', LANG: 'C.UTF-8', LC_TIME: 'C', TZ: 'UTC', HOME: '/app-home', USER: 'web', LOGNAME: 'web', A: 'web', B: 'web', BERTH_APP: 'shop', PORT: '8000' });
  // TMPDIR only when the app runs as berth's own user.
  assert.equal(appEnv({ TMPDIR: '/t' }, { app, user: { ...user, switches: false }, vars: {} }).TMPDIR, '/t');
});

// ---- not root: permissions that cannot be enforced ----------------------------------------------

/** Runs the CLI as a non-root user: ourselves when not root, else nobody (when nobody can run Node here). */
function cliAsUser(args: string[], timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const ids = RUNNING_AS_ROOT ? { uid: NOBODY_UID, gid: NOBODY?.gid ?? NOBODY_UID } : {};
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [MAIN, ...args], { ...ids, cwd: '/', env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c));
    proc.stderr.on('data', (c: Buffer) => (stderr += c));
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

// The CLI itself runs from the checkout, so as nobody it needs to read it.
const notRootSkip = RUNNING_AS_ROOT ? (NOBODY ? cannotRun(NOBODY_UID, NOBODY.gid, process.execPath, MAIN) : 'no user "nobody" to run the CLI as') : false;

test('not root: check and start refuse control.permissions that app code could bypass; permissions_unenforced_ok makes it a warning', { skip: notRootSkip }, async (t) => {
  const dir = await tempDir(t, 'berth-perm-');
  await chmod(dir, 0o777);
  const app = { processes: { web: { command: 'true' } } };
  const strict = await writeConfig(join(dir, 'strict'), { state_dir: 'state', listen: ['127.0.0.1:0'], control: { permissions: { default: { alice: ['shop'] } } }, apps: { shop: app } });
  const ok = await writeConfig(join(dir, 'ok'), { state_dir: 'state', listen: ['127.0.0.1:0'], control: { permissions: { default: { alice: ['shop'] } }, permissions_unenforced_ok: true }, apps: { shop: app } });
  const none = await writeConfig(join(dir, 'none'), { state_dir: 'state', listen: ['127.0.0.1:0'], apps: { shop: app } });
  for (const sub of ['strict', 'ok', 'none']) await chmod(join(dir, sub), 0o777);

  const check = await cliAsUser(['check', '--config', strict]);
  assert.equal(check.code, 2, check.stderr);
  assert.match(check.stderr, /control\.permissions\.default: restricts alice, but berth is not root/);
  assert.match(check.stderr, /permissions_unenforced_ok/);

  const start = await cliAsUser(['start', '--config', strict]);
  assert.equal(start.code, 2, start.stderr);
  assert.match(start.stderr, /berth is not root/);
  assert.equal((await lstat(join(dir, 'strict', 'state')).catch(() => null)), null, 'refused before touching anything');

  const accepted = await cliAsUser(['check', '--config', ok]);
  assert.equal(accepted.code, 0, accepted.stderr);
  assert.match(accepted.stderr, /warning: control\.permissions\.default restricts alice, but berth is not root.*accepted/);

  const plain = await cliAsUser(['check', '--config', none]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(plain.stderr, '', 'no permissions: nothing to say');
});

test('as root: check and start fail on an unknown user or group, naming it', { skip: RUNNING_AS_ROOT ? false : 'needs root: users are looked up only when berth can switch to them' }, async (t) => {
  const dir = await tempDir(t);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    apps: {
      shop: { hosts: ['shop.test'], user: 'no-such-user-b3rth', processes: { web: { command: 'true' } } },
      blog: { hosts: ['blog.test'], user: 'nobody', group: 'no-such-group-b3rth', processes: { web: { command: 'true' } } },
    },
  });
  for (const verb of ['check', 'start']) {
    const res = await runCli([verb, '--config', file]);
    assert.equal(res.code, 2, `${verb}: ${res.stderr}`);
    assert.match(res.stderr, /apps\.shop\.user: no user named "no-such-user-b3rth"/);
    assert.match(res.stderr, /apps\.blog\.group: no group named "no-such-group-b3rth"/);
  }
  assert.equal(await lstat(join(dir, 'state')).catch(() => null), null, 'start refused before touching anything');
});

test('as root: an app that swaps its BERTH_SOCKET for a symlink to the control socket never gets berth to connect there', { skip: rootSkip(NOBODY_UID) }, async (t) => {
  const dir = await tempDir(t, 'berth-priv-');
  await chmod(dir, 0o755);
  const src = join(dir, 'evil-src');
  await mkdir(src);
  // Instead of binding its socket, the app leaves a symlink to the control socket in its place. As
  // root, berth would follow it: its probe would find the app "ready" and the proxy would hand every
  // front-door request for this app to the control API, as an unrestricted admin.
  await writeFile(join(src, 'evil.mjs'), "import { symlinkSync } from 'node:fs';\nsymlinkSync(process.env.TARGET, process.env.BERTH_SOCKET);\nsetInterval(() => {}, 1 << 30);\n");
  const stateDir = join(dir, 'state');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      evil: {
        hosts: ['evil.test'],
        source: src,
        user: 'nobody',
        listen: 'socket',
        env: { TARGET: join(stateDir, 'control.sock') },
        processes: { web: { command: `"${NODE}" evil.mjs` } },
        health: { path: null, startup_timeout: '3s' },
        queue: { max: 10, timeout: '1s' },
      },
    },
  });
  const gw = await spawnGateway(t, file);
  const snapshot = async () => (await gw.api('/v1/apps/evil')).generations?.[0]?.instances?.[0];
  await waitFor(async () => (await snapshot())?.pid, { timeoutMs: 20_000, message: 'the instance runs' });
  await new Promise((r) => setTimeout(r, 1_500));
  const res = await http({ port: gw.port }, { host: 'evil.test', path: '/v1/status' });
  assert.notEqual(res.status, 200, `the front door reached the control API: ${res.body.slice(0, 200)}`);
  assert.doesNotMatch(res.body, /"state":"running"/);
  assert.notEqual((await snapshot())?.state, 'ready');
});
