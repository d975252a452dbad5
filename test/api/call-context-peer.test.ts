/**
 * The call-context header is trusted by address (`control.call_context_from`, loopback by default), and
 * every local user can connect from loopback, an app's user included. When berth runs apps as their own
 * users (as root), a connection owned by an app's user is refused the call context whatever its address,
 * so app code cannot claim to be any caller (issue #10, findings 2 and 13 together). Real gateway, real
 * connections made by a process running as the app's user (`nobody`). Skips when not root.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { hashToken } from '../../src/api/auth.ts';
import { addressHex, localPeer } from '../../src/api/local-peer.ts';
import { lookupUser } from '../../src/supervisor/app-user.ts';
import { FIXTURE_WEB_COMMAND, RUNNING_AS_ROOT, fixtureApp, http, startGateway, tempDir, writeConfig } from '../helpers/gateway.ts';

const NOBODY = lookupUser('nobody');
const skip = !RUNNING_AS_ROOT ? 'needs root: berth runs apps as their own users only as root' : !NOBODY ? 'no user "nobody"' : false;
const CONTEXT_HEADER = 'x-auth-context';
const VIEWER = 'viewer-token-1';

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64');
}

/** A copy of this Node that `nobody` may run (the checkout may be private). */
function publicNode(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-node-'));
  chmodSync(dir, 0o755);
  const copy = join(dir, 'node');
  copyFileSync(process.execPath, copy);
  chmodSync(copy, 0o755);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return copy;
}

/** One request to the control port made by a process running as `uid`; resolves with its status and body. */
function requestAs(node: string, uid: number, gid: number, port: number, method: string, path: string, headers: Record<string, string>, body?: string): Promise<{ status: number; body: any }> {
  const script = `
    const req = require('node:http').request({ host: '127.0.0.1', port: ${port}, method: ${JSON.stringify(method)}, path: ${JSON.stringify(path)}, headers: ${JSON.stringify({ ...headers, ...(body ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } : {}) })} }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => { process.stdout.write(JSON.stringify({ status: res.statusCode, body: JSON.parse(text) })); });
    });
    req.on('error', (err) => { process.stderr.write(String(err)); process.exit(2); });
    req.end(${JSON.stringify(body ?? '')});`;
  return new Promise((resolve, reject) => {
    const child = spawn(node, ['-e', script], { uid, gid, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`exit ${code}: ${err}`))));
  });
}

/** Runs `script` in a Node process as `uid`, to its end. */
function runAs(node: string, uid: number, gid: number, script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(node, ['-e', script], { uid, gid, cwd: '/', stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', () => resolve());
  });
}

test('a connection owned by an app\'s user is refused the call context, even from loopback', { skip }, async (t) => {
  const node = publicNode(t);
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'silent' },
    control: { listen: '127.0.0.1:0', call_context_header: CONTEXT_HEADER, tokens: { vic: { hash: hashToken(VIEWER), roles: ['viewer'] } } },
    // The app need not come up: what matters is the user it runs as.
    apps: { shop: { source: src, user: 'nobody', hosts: ['shop.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } } },
  });
  const { gateway } = await startGateway(t, file);
  const control = Number(gateway.status().controlListen!.split(':').pop());
  const admin = { [CONTEXT_HEADER]: b64({ user: 'carol', roles: ['admin'] }) };

  // The auth proxy's own user (here root, the test) is still trusted from loopback.
  const proxy = await http({ port: control }, { path: '/v1/whoami', headers: admin });
  assert.equal(proxy.status, 200, proxy.body);
  assert.equal(proxy.json().user, 'carol');

  // shop's user, from the same loopback address: no identity claimed through the header.
  const { uid, gid } = NOBODY!;
  const claimed = await requestAs(node, uid, gid, control, 'GET', '/v1/whoami', admin);
  assert.equal(claimed.status, 401, JSON.stringify(claimed));
  assert.match(claimed.body.error.message, new RegExp(`belongs to uid ${uid}, which runs app shop`));
  const change = await requestAs(node, uid, gid, control, 'PUT', '/v1/apps/shop/mode', admin, '{"mode":"maintenance"}');
  assert.equal(change.status, 401, JSON.stringify(change));
  assert.equal(gateway.appStatus('shop')!.mode, 'normal');
  const refused = (await gateway.history({ app: 'shop', limit: 100 })).find((r) => r.action === 'mode');
  assert.equal(refused?.outcome, 'refused');
  assert.equal(refused?.user, 'unauthenticated');
  // Sent, then closed at once: the kernel shows a closed socket as owned by no one (and uid 0), which is
  // not trusted either (the unit test below shows what the tables say).
  const request = `PUT /v1/apps/shop/mode HTTP/1.1\r\nHost: x\r\n${CONTEXT_HEADER}: ${admin[CONTEXT_HEADER]}\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n{"mode":"maintenance"}`;
  for (let i = 0; i < 5; i++) {
    await runAs(node, uid, gid, `const s = require('node:net').connect(${control}, '127.0.0.1', () => { s.write(${JSON.stringify(request)}, () => process.exit(0)); });`);
  }
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(gateway.appStatus('shop')!.mode, 'normal');
  // Each attempt was refused as unidentified, never taken for carol's.
  assert.deepEqual((await gateway.history({ user: 'carol', limit: 100 })).map((r) => r.action), []);
  // A token it holds still works, as for anyone.
  const withToken = await requestAs(node, uid, gid, control, 'GET', '/v1/whoami', { ...admin, authorization: `Bearer ${VIEWER}` });
  assert.equal(withToken.status, 200, JSON.stringify(withToken));
  assert.equal(withToken.body.user, 'vic');
});

test('local-peer: the socket tables tell a live local client\'s uid, a closed one, and a remote one', { skip: process.platform !== 'linux' ? 'reads /proc/net/tcp' : false }, async (t) => {
  assert.equal(addressHex('127.0.0.1'), '00000000000000000000ffff7f000001');
  assert.equal(addressHex('::ffff:127.0.0.1'), '00000000000000000000ffff7f000001');
  assert.equal(addressHex('::1'), '00000000000000000000000000000001');
  assert.equal(addressHex('fe80::1:2'), 'fe800000000000000000000000010002');
  assert.equal(addressHex('not an address'), null);
  for (const host of ['127.0.0.1', '::']) {
    const seen: { live: unknown; closed: unknown }[] = [];
    const server = createServer((sock) => {
      sock.on('error', () => {});
      const remote = { address: sock.remoteAddress, port: sock.remotePort };
      const local = { address: sock.localAddress, port: sock.localPort };
      sock.once('data', async () => {
        const live = await localPeer(remote, local);
        sock.write('go');
        await new Promise<void>((r) => sock.once('close', () => r()));
        seen.push({ live, closed: await localPeer(remote, local) });
      });
    });
    t.after(() => server.close());
    await new Promise<void>((r) => server.listen(0, host, r));
    const port = (server.address() as { port: number }).port;
    // A client process that sends, waits for a word, and exits without closing: its socket is orphaned.
    await new Promise<void>((resolve) => {
      const child = spawn(process.execPath, ['-e', `const s = require('node:net').connect(${port}, '127.0.0.1', () => s.write('hi')); s.on('data', () => process.exit(0));`], { stdio: 'ignore' });
      child.on('exit', () => resolve());
    });
    const [one] = await (async () => {
      for (let i = 0; i < 50 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      return seen;
    })();
    assert.deepEqual(one, { live: { kind: 'local', uid: process.getuid!() }, closed: { kind: 'orphan' } }, host);
    assert.deepEqual(await localPeer({ address: '192.0.2.1', port: 1 }, { address: '127.0.0.1', port }), { kind: 'remote' });
  }
});
