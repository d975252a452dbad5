/**
 * Issue #5 acceptance, end to end: real gateways (in-process, or `berth start` as a child), real app
 * processes, real sockets, and real HTTP clients (node:http, fetch, ws and curl). Live modes under load,
 * modes across a restart, static files pinned across a deploy, traversal, WebSockets across a deploy,
 * client IPs behind a trusted hop, and rate limits.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, execFile } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { Agent, createServer, request, type IncomingHttpHeaders } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import WebSocket from 'ws';
import type { Mode } from '../../src/config/schema.ts';
import { staticChannel, type StaticFileEvent } from '../../src/proxy/static.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';
import { LoadRunner } from '../deploy/load-runner.ts';

const hasCurl = spawnSync('curl', ['--version']).status === 0;
const CSS = 'body { color: #222; background: white; }\n'.repeat(40);

function web(instances = 1, concurrency = 16) {
  return { web: { command: FIXTURE_WEB_COMMAND, instances, concurrency } };
}

async function ready(port: number): Promise<void> {
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
}

/** One request through the front door; `localAddress` picks the client's own loopback address. */
function send(
  port: number,
  opts: { method?: string; path?: string; host?: string; headers?: Record<string, string>; body?: string; agent?: Agent | false; localAddress?: string },
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.host) headers.host = opts.host;
    if (opts.body !== undefined) headers['content-length'] = String(Buffer.byteLength(opts.body));
    const req = request({ host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/', headers, agent: opts.agent ?? false, localAddress: opts.localAddress }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.setTimeout(20_000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** `PUT /v1/apps/:app/mode` on the control socket, as `user`. */
function putMode(socketPath: string, app: string, body: unknown, user = 'tester') {
  return http({ socketPath }, { path: `/v1/apps/${app}/mode`, method: 'PUT', headers: { 'content-type': 'application/json', 'x-berth-user': user }, body: JSON.stringify(body) });
}

function curl(args: string[]): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--max-time', '20', ...args], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr: stderr.toString() });
    });
  });
}

/** The status line and headers curl printed with -D -, lower-cased names. */
function curlHead(out: Buffer | string): { status: number; headers: Record<string, string> } {
  const text = out.toString('latin1');
  const block = text.slice(0, text.indexOf('\r\n\r\n'));
  const [line, ...rest] = block.split('\r\n');
  const headers: Record<string, string> = {};
  for (const h of rest) {
    const i = h.indexOf(':');
    headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
  }
  return { status: Number(line.split(' ')[1]), headers };
}

// ---- modes ---------------------------------------------------------------------------------------

interface Sample {
  kind: 'GET' | 'POST';
  /** POST: the body sent, which the app echoes. */
  payload: string;
  sent: number;
  done: number;
  status: number;
  /** X-Berth-Mode of the response. */
  mode: string | null;
  reason: string | null;
  /** GET: the X-Berth-Mode the app received. POST: whether the body came back. */
  seen: string | null;
  error: string | null;
}

/** What a response says about the mode it was handled in; null when it fits none. */
function modeOf(s: Sample): Mode | null {
  if (s.status === 503 && s.reason === 'maintenance' && s.mode === 'maintenance') return 'maintenance';
  if (s.kind === 'POST') {
    if (s.status === 503 && s.reason === 'read-only' && s.mode === 'read-only') return 'read-only';
    if (s.status === 200 && s.mode === null && s.seen === s.payload) return 'normal';
    return null;
  }
  if (s.status !== 200) return null;
  if (s.mode === 'read-only' && s.seen === 'read-only') return 'read-only';
  if (s.mode === null && s.seen === 'none') return 'normal';
  return null;
}

test('flipping modes 50 times under mixed load: every answer fits the mode at its arrival; the other app is untouched', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      shop: { hosts: ['shop.test'], source: src, processes: web(2, 16) },
      blog: { hosts: ['blog.test'], source: src, processes: web(1, 16) },
    },
  });
  const { gateway, port } = await startGateway(t, file);
  await ready(port);
  const socket = gateway.config.control.socket;
  const blogPids = () => gateway.appStatus('blog')!.generations.flatMap((g) => g.instances.map((i) => i.pid));
  const blogBefore = blogPids();
  const blog = LoadRunner.start({ port, host: 'blog.test', clients: 2 });
  t.after(() => blog.stop());

  const samples: Sample[] = [];
  let running = true;
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  t.after(() => agent.destroy());
  const client = async (n: number) => {
    for (let i = 0; running; i++) {
      const kind = (i + n) % 2 === 0 ? 'GET' : 'POST';
      const sent = performance.now();
      const payload = `p-${n}-${i}`;
      const s: Sample = { kind, payload, sent, done: 0, status: 0, mode: null, reason: null, seen: null, error: null };
      try {
        const r = await send(port, { host: 'shop.test', method: kind, path: kind === 'GET' ? '/headers' : '/echo', body: kind === 'POST' ? payload : undefined, agent: n % 2 === 0 ? agent : false });
        s.status = r.status;
        s.mode = (r.headers['x-berth-mode'] as string | undefined) ?? null;
        s.reason = (r.headers['x-berth-reason'] as string | undefined) ?? null;
        if (r.status === 200) s.seen = kind === 'GET' ? (JSON.parse(r.body).headers['x-berth-mode'] ?? 'none') : r.body;
      } catch (err) {
        s.error = (err as Error).message;
      }
      s.done = performance.now();
      samples.push(s);
    }
  };
  const clients = [0, 1, 2, 3, 4, 5].map(client);
  await waitFor(() => samples.length > 20, { message: 'load running' });

  // The mode in force is known outside each switch's window [start, end]; inside it, either one.
  const order: Mode[] = ['maintenance', 'read-only', 'normal'];
  const switches: { start: number; end: number; mode: Mode }[] = [];
  for (let i = 0; i < 50; i++) {
    const mode = order[i % 3];
    const start = performance.now();
    const res = await putMode(socket, 'shop', mode === 'normal' ? { mode } : { mode, message: `flip ${i}`, retry_after: 5 });
    switches.push({ start, end: performance.now(), mode });
    assert.equal(res.status, 200, res.body);
    const before = samples.length;
    await waitFor(() => samples.length >= before + 6, { message: 'requests between flips' });
  }
  running = false;
  await Promise.all(clients);
  const blogStats = await blog.stop();

  const modesDuring = (s: Sample): Set<Mode> => {
    const possible = new Set<Mode>();
    let current: Mode = 'normal';
    for (const sw of switches) {
      if (sw.end <= s.sent) current = sw.mode;
    }
    possible.add(current);
    for (const sw of switches) if (sw.end > s.sent && sw.start < s.done) possible.add(sw.mode);
    return possible;
  };
  const wrong: string[] = [];
  const seen = new Map<Mode, number>();
  for (const s of samples) {
    if (s.error) {
      wrong.push(`${s.kind}: ${s.error}`);
      continue;
    }
    const m = modeOf(s);
    if (m === null) wrong.push(`${s.kind}: ${s.status} mode=${s.mode} reason=${s.reason} seen=${s.seen}`);
    else if (!modesDuring(s).has(m)) wrong.push(`${s.kind}: answered as ${m}, but the mode was ${[...modesDuring(s)].join('/')}`);
    else seen.set(m, (seen.get(m) ?? 0) + 1);
  }
  assert.deepEqual(wrong, []);
  for (const m of order) assert.ok((seen.get(m) ?? 0) > 10, `answers in ${m}: ${seen.get(m)}`);
  assert.deepEqual(blogStats.failures, []);
  assert.ok(blogStats.ok > 50);
  assert.deepEqual(blogPids(), blogBefore, 'the other app kept its processes');
  assert.equal(gateway.appStatus('blog')!.mode, 'normal');
  // Every switch is in the history, with who asked.
  const history = (await http({ socketPath: socket }, { path: '/v1/history?app=shop&limit=100' })).json().history;
  const modes = history.filter((h: { action: string }) => h.action === 'mode');
  assert.equal(modes.length, 50);
  for (const h of modes) {
    assert.equal(h.user, 'tester');
    assert.equal(h.outcome, 'ok');
  }
  assert.match(modes[0].detail, /read-only -> normal|maintenance -> read-only|normal -> maintenance/);
});

test('berth mode switches live, shows in status and routes, survives a restart, and refuses bad input', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  await writeFile(join(src, 'maintenance.html'), '<h1>Closed: {{message}}</h1>');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      shop: { hosts: ['shop.test'], source: src, processes: web(), pages: { maintenance: 'maintenance.html' } },
      blog: { hosts: ['blog.test'], source: src, processes: web() },
    },
  });
  const env = { BERTH_USER: 'alice' };
  let gw = await spawnGateway(t, file);
  await ready(gw.port);
  const cli = (...args: string[]) => runCli([...args, '--socket', gw.socket], { env });

  const on = await cli('mode', 'shop', 'maintenance', '--message', 'back at 5 <pm>', '--retry-after', '120');
  assert.equal(on.code, 0, on.stderr);
  assert.match(on.stdout, /shop: normal -> maintenance .*back at 5 <pm>.*Retry-After 120s/);
  const closed = await http({ port: gw.port }, { host: 'shop.test', path: '/' });
  assert.equal(closed.status, 503);
  assert.equal(closed.headers['retry-after'], '120');
  assert.equal(closed.body, '<h1>Closed: back at 5 &lt;pm&gt;</h1>');
  assert.equal((await http({ port: gw.port }, { host: 'blog.test', path: '/' })).status, 200);
  const routes = await cli('routes');
  assert.match(routes.stdout, /shop\.test\s+\/\s+web\s+shop\s+maintenance/);
  assert.match(routes.stdout, /blog\.test\s+\/\s+web\s+blog\s+normal/);
  const status = JSON.parse((await cli('status', 'shop', '--json')).stdout);
  assert.equal(status.mode, 'maintenance');
  assert.equal(status.modeMessage, 'back at 5 <pm>');

  // Bad input: the CLI (exit 2 before asking), the API (400/422 with the reason), an unknown app (404).
  const sideways = await cli('mode', 'shop', 'sideways');
  assert.equal(sideways.code, 2);
  assert.match(sideways.stderr, /unknown mode "sideways"/);
  const soon = await cli('mode', 'shop', 'maintenance', '--retry-after', 'soon');
  assert.equal(soon.code, 2);
  assert.match(soon.stderr, /whole number of seconds/);
  const nobody = await cli('mode', 'nope', 'maintenance');
  assert.equal(nobody.code, 1);
  assert.match(nobody.stderr, /no app named "nope"/);
  const bad: [unknown, number, RegExp][] = [
    [[], 400, /JSON object/],
    [{}, 400, /"mode" is required/],
    [{ mode: 3 }, 400, /must be a string/],
    [{ mode: 'maintenance', colour: 'red' }, 400, /unknown key "colour"/],
    [{ mode: 'maintenance', message: 5 }, 400, /"message" must be a string/],
    [{ mode: 'maintenance', retry_after: '60' }, 400, /number of seconds/],
    [{ mode: 'sideways' }, 422, /unknown mode "sideways"/],
    [{ mode: 'maintenance', retry_after: -1 }, 422, /whole number of seconds/],
    [{ mode: 'maintenance', retry_after: 1.5 }, 422, /whole number of seconds/],
    [{ mode: 'maintenance', message: 'x'.repeat(501) }, 422, /at most 500/],
    [{ mode: 'normal', retry_after: 5 }, 422, /only apply to maintenance and read-only/],
  ];
  for (const [body, status, message] of bad) {
    const res = await putMode(gw.socket, 'shop', body);
    assert.equal(res.status, status, `${JSON.stringify(body)}: ${res.body}`);
    assert.match(res.json().error.message, message);
    assert.equal(res.json().error.code, status === 400 ? 'BERTH_E_BAD_REQUEST' : 'BERTH_E_UNPROCESSABLE');
  }
  assert.equal((await putMode(gw.socket, 'nope', { mode: 'normal' })).status, 404);
  // None of that changed anything.
  assert.equal((await http({ port: gw.port }, { host: 'shop.test', path: '/' })).headers['retry-after'], '120');

  // A restart: the mode comes back from the store.
  gw.proc.kill('SIGTERM');
  assert.equal((await gw.exited).code, 0);
  gw = await spawnGateway(t, file);
  await ready(gw.port);
  const again = await http({ port: gw.port }, { host: 'shop.test', path: '/', headers: { accept: 'application/json' } });
  assert.equal(again.status, 503);
  assert.equal(again.headers['retry-after'], '120');
  assert.deepEqual(again.json(), { error: { status: 503, reason: 'maintenance', message: 'back at 5 <pm>' } });
  const ro = await cli('mode', 'shop', 'read-only');
  assert.equal(ro.code, 0, ro.stderr);
  assert.equal((await http({ port: gw.port }, { host: 'shop.test', path: '/echo', method: 'POST', body: 'x' })).status, 503);
  const get = await http({ port: gw.port }, { host: 'shop.test', path: '/headers' });
  assert.equal(get.json().headers['x-berth-mode'], 'read-only');
  assert.equal((await cli('mode', 'shop', 'normal')).code, 0);
  assert.equal((await http({ port: gw.port }, { host: 'shop.test', path: '/echo', method: 'POST', body: 'x' })).body, 'x');
  const history = (await http({ socketPath: gw.socket }, { path: '/v1/history?app=shop' })).json().history;
  const switches = history.filter((h: { action: string; outcome: string }) => h.action === 'mode' && h.outcome === 'ok');
  assert.equal(switches.length, 3);
  for (const h of switches) assert.equal(h.user, 'alice');
  assert.ok(history.some((h: { action: string; outcome: string }) => h.action === 'mode' && h.outcome === 'refused'), 'refused switches are recorded too');
});

// ---- static files ----------------------------------------------------------------------------------

async function site(dir: string, name: string, fill: string): Promise<string> {
  const src = await fixtureApp(dir, name);
  await mkdir(join(src, 'public'), { recursive: true });
  await writeFile(join(src, 'public', 'app.css'), CSS);
  await writeFile(join(src, 'public', 'app.css.br'), brotliCompressSync(CSS));
  await writeFile(join(src, 'public', 'app.css.gz'), gzipSync(CSS));
  await writeFile(join(src, 'public', 'big.bin'), Buffer.alloc(4 * 1024 * 1024, fill));
  await writeFile(join(src, 'public', 'index.html'), `<h1>${name}</h1>`);
  await writeFile(join(src, 'secret.txt'), 'SECRET=release');
  return src;
}

test('static files come from the release a request was pinned to, across a deploy; curl and fetch see validators, ranges and encodings', async (t) => {
  const dir = await tempDir(t);
  const v1 = await site(dir, 'v1', 'A');
  const v2 = await site(dir, 'v2', 'B');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      site: {
        source: v1,
        processes: web(),
        health: { path: '/up', interval: '250ms' },
        routes: [{ path: '/static', static: 'public', cache: 'immutable', cors: '*' }, { path: '/', to: 'web' }],
      },
    },
  });
  const { gateway, port } = await startGateway(t, file);
  await ready(port);
  const base = `http://127.0.0.1:${port}`;

  // A large download starts on release 1; the deploy switches, and the download still ends on release 1.
  const download = new Promise<Buffer>((resolve, reject) => {
    const req = request(`${base}/static/big.bin`, { agent: false }, (res) => {
      res.pause();
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks)));
      res.on('error', reject);
      const d = gateway.deployer.begin('site', { kind: 'deploy', source: v2 });
      void d.done.then(() => (d.state === 'succeeded' ? res.resume() : reject(new Error(`deploy ${d.state}: ${d.error}`))));
    });
    req.on('error', reject);
    req.end();
  });
  const body = await download;
  assert.equal(body.length, 4 * 1024 * 1024);
  assert.ok(body.every((b) => b === 0x41), 'every byte from release 1');
  const after = await fetch(`${base}/static/big.bin`, { headers: { range: 'bytes=0-3' } });
  assert.equal(after.status, 206);
  assert.equal(await after.text(), 'BBBB');
  assert.equal(await (await fetch(`${base}/static/`)).text(), '<h1>v2</h1>');

  // fetch (undici) decodes br/gzip itself: the CSS comes back as written.
  const fetched = await fetch(`${base}/static/app.css`);
  assert.match(String(fetched.headers.get('content-encoding')), /^(br|gzip)$/);
  assert.equal(fetched.headers.get('vary'), 'Accept-Encoding');
  assert.equal(await fetched.text(), CSS);

  if (!hasCurl) {
    t.diagnostic('curl is not installed: curl checks skipped');
    return;
  }
  const url = `${base}/static/app.css`;
  const first = await curl(['-D', '-', '-o', '/dev/null', url]);
  assert.equal(first.code, 0, first.stderr);
  const h = curlHead(first.stdout);
  assert.equal(h.status, 200);
  assert.equal(h.headers['content-type'], 'text/css; charset=utf-8');
  assert.equal(h.headers['cache-control'], 'public, max-age=31536000, immutable');
  assert.equal(h.headers['access-control-allow-origin'], '*');
  assert.equal(h.headers['content-length'], String(CSS.length));
  const etag = h.headers.etag;
  assert.match(etag, /^"[0-9a-f]+-[0-9a-f]+"$/);
  assert.equal(curlHead((await curl(['-D', '-', '-o', '/dev/null', '-H', `If-None-Match: ${etag}`, url])).stdout).status, 304);
  assert.equal(curlHead((await curl(['-D', '-', '-o', '/dev/null', '-H', `If-Modified-Since: ${h.headers['last-modified']}`, url])).stdout).status, 304);
  assert.equal(curlHead((await curl(['-D', '-', '-o', '/dev/null', '-H', 'If-None-Match: "old"', url])).stdout).status, 200);
  const range = await curl(['-r', '10-19', '-D', '-', url]);
  const rh = curlHead(range.stdout);
  assert.equal(rh.status, 206);
  assert.equal(rh.headers['content-range'], `bytes 10-19/${CSS.length}`);
  assert.equal(range.stdout.toString('latin1').split('\r\n\r\n')[1], CSS.slice(10, 20));
  assert.equal(curlHead((await curl(['-r', `${CSS.length}-`, '-D', '-', '-o', '/dev/null', url])).stdout).status, 416);
  const compressed = await curl(['--compressed', '-D', '-', url]);
  const ch = curlHead(compressed.stdout);
  assert.equal(ch.headers['content-encoding'], 'br');
  assert.equal(compressed.stdout.toString('utf8').split('\r\n\r\n')[1], CSS, 'curl decodes the brotli sibling to the file');
  const gz = await curl(['-H', 'Accept-Encoding: gzip', url]);
  assert.deepEqual(gz.stdout, await readFile(join(v2, 'public', 'app.css.gz')));
});

test('twenty encoded traversal attempts get 404 and open no file outside the static dir', async (t) => {
  const dir = await tempDir(t);
  const src = await site(dir, 'v1', 'A');
  await writeFile(join(dir, 'outside.txt'), 'SECRET=outside');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { site: { source: src, processes: web(), routes: [{ path: '/static', static: 'public' }, { path: '/', to: 'web' }] } },
  });
  const { port } = await startGateway(t, file);
  await ready(port);
  const opened: string[] = [];
  const onOpen = (m: unknown) => opened.push((m as StaticFileEvent).file);
  subscribe(staticChannel.name, onOpen);
  t.after(() => unsubscribe(staticChannel.name, onOpen));
  const attempts = [
    '/static/../secret.txt',
    '/static/%2e%2e/secret.txt',
    '/static/%2E%2E/secret.txt',
    '/static/.%2e/secret.txt',
    '/static/%2e./secret.txt',
    '/static/..%2fsecret.txt',
    '/static/%2e%2e%2fsecret.txt',
    '/static/%2e%2e%5csecret.txt',
    '/static/..%5c..%5csecret.txt',
    '/static/%252e%252e/secret.txt',
    '/static/%00/../secret.txt',
    '/static/index.html%00.txt',
    '/static/%c0%ae%c0%ae/secret.txt',
    '/static/./../secret.txt',
    '/static//../secret.txt',
    '/static/%2e%2e/%2e%2e/%2e%2e/outside.txt',
    '/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd',
    '/static/..%252f..%252fsecret.txt',
    '/static/%2e%2e;/secret.txt',
    '/static/%%32%65%%32%65/secret.txt',
  ];
  assert.equal(attempts.length, 20);
  for (const target of attempts) {
    // Raw bytes on a socket: no client tidies the path first.
    const text = await new Promise<string>((resolve, reject) => {
      const sock = connect(port, '127.0.0.1');
      let out = '';
      sock.on('data', (c) => (out += c.toString('latin1')));
      sock.on('end', () => resolve(out));
      sock.on('error', reject);
      sock.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    });
    assert.match(text, /^HTTP\/1\.1 404 /, `${target}: ${text.slice(0, 40)}`);
    assert.ok(!text.includes('SECRET') && !text.includes('root:'), `${target} leaked a file`);
  }
  if (hasCurl) {
    for (const target of attempts.slice(0, 5)) {
      const r = await curl(['--path-as-is', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${port}${target}`]);
      assert.equal(r.stdout.toString(), '404', `curl ${target}`);
    }
  }
  assert.deepEqual(opened, [], 'no file was opened at all');
  assert.equal((await http({ port }, { path: '/static/' })).body, '<h1>v1</h1>');
  assert.equal(opened.length, 1);
  assert.match(opened[0], /\/public\/index\.html$/);
});

// ---- WebSockets ----------------------------------------------------------------------------------

interface Socketed {
  ws: WebSocket;
  hello: { release: string; pid: number; headers: Record<string, string> };
  messages: string[];
  /** The close code, and when it came (epoch ms). */
  closed: Promise<{ code: number; at: number }>;
}

function openWs(t: TestContext, url: string): Promise<Socketed> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    t.after(() => ws.terminate());
    const messages: string[] = [];
    const closed = new Promise<{ code: number; at: number }>((r) => ws.once('close', (code) => r({ code, at: Date.now() })));
    ws.once('message', (d) => {
      ws.on('message', (m) => messages.push(String(m)));
      resolve({ ws, hello: JSON.parse(String(d)), messages, closed });
    });
    ws.once('error', reject);
  });
}

async function echo(s: Socketed, text: string): Promise<void> {
  const n = s.messages.length;
  s.ws.send(text);
  await waitFor(() => s.messages.length > n, { timeoutMs: 5_000, message: `echo of ${text}` });
  assert.equal(s.messages[s.messages.length - 1], text);
}

test('a WebSocket opened before a deploy echoes until the drain deadline, then gets 1001; one opened after lands on the new release', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  const drainMs = 1500;
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { chat: { source: v1, processes: web(1, 8), health: { path: '/up', interval: '250ms' }, timeouts: { drain: `${drainMs}ms` } } },
  });
  const { gateway, port } = await startGateway(t, file);
  await ready(port);
  const url = `ws://127.0.0.1:${port}/ws`;
  const old = await openWs(t, url);
  const r1 = old.hello.release;
  assert.equal(old.hello.headers['x-forwarded-for'], '127.0.0.1');
  assert.ok(old.hello.headers['x-request-id']);
  await echo(old, 'before');
  assert.equal(gateway.appStatus('chat')!.db.inUse, 1, 'the socket counts in flight');

  const deploy = gateway.deployer.begin('chat', { kind: 'deploy', source: v2 });
  // When the switch happened, by the deploy's own record (the drain starts after it).
  const switched = await waitFor(() => deploy.events.find((e) => e.step === 'switch' && e.status === 'succeeded'), { message: 'the switch' });
  const switchedAt = Date.parse(switched.at);
  const fresh = await openWs(t, url);
  assert.notEqual(fresh.hello.release, r1, 'a socket opened after the switch lands on the new release');
  // The old one goes on echoing through the drain.
  let n = 0;
  while (Date.now() < switchedAt + drainMs - 500) await echo(old, `during ${n++}`);
  assert.ok(n >= 1);
  const { code, at } = await old.closed;
  assert.equal(code, 1001);
  assert.ok(at - switchedAt >= drainMs, `closed ${at - switchedAt}ms after the switch, drain is ${drainMs}ms`);
  await deploy.done;
  assert.equal(deploy.state, 'succeeded', deploy.error ?? '');
  const drain = deploy.events.find((e) => e.step === 'drain' && e.status === 'succeeded');
  assert.match(drain?.message ?? '', /1 WebSocket\(s\) closed with 1001/);
  await echo(fresh, 'after the deploy');
  const later = await openWs(t, url);
  assert.equal(later.hello.release, fresh.hello.release);
  assert.equal(gateway.appStatus('chat')!.generations.length, 1, 'the old generation stopped');
});

// ---- client IPs and rate limits ------------------------------------------------------------------

test('trusted_proxy_count 1: behind a real hop, a spoofed X-Forwarded-For never picks the bucket; the real address does', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    trusted_proxy_count: 1,
    apps: { shop: { source: src, processes: web(), rate_limit: { per_ip: '1/m', burst: 3 } } },
  });
  const { port } = await startGateway(t, file);
  await ready(port);
  // The trusted hop: a plain reverse proxy that appends its client's address, as nginx's
  // $proxy_add_x_forwarded_for does.
  const hop = createServer((req, res) => {
    const xff = req.headers['x-forwarded-for'];
    const headers = { ...req.headers, 'x-forwarded-for': `${xff ? `${xff}, ` : ''}${req.socket.remoteAddress}` };
    const up = request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers, agent: false }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  t.after(() => hop.close());
  await new Promise<void>((r) => hop.listen(0, '127.0.0.1', r));
  const hopPort = (hop.address() as AddressInfo).port;
  const via = (localAddress: string, spoof: string, path = '/') => send(hopPort, { path, localAddress, headers: { 'x-forwarded-for': spoof } });

  const a = [];
  for (let i = 0; i < 5; i++) a.push(await via('127.0.0.2', '1.2.3.4'));
  assert.deepEqual(a.map((r) => r.status), [200, 200, 200, 429, 429]);
  const retryAfter = Number(a[3].headers['retry-after']);
  assert.ok(retryAfter >= 55 && retryAfter <= 60, `Retry-After ${retryAfter}`);
  // Changing the spoofed entry does not buy a new bucket...
  assert.equal((await via('127.0.0.2', '5.6.7.8')).status, 429);
  // ...and another real client claiming the same spoofed address is not limited by it.
  const b = await via('127.0.0.3', '1.2.3.4', '/headers');
  assert.equal(b.status, 200);
  // The app sees the chain with berth's peer (the hop) appended.
  assert.equal(JSON.parse(b.body).headers['x-forwarded-for'], '1.2.3.4, 127.0.0.3, 127.0.0.1');
});

test('rate limit: a burst of 100 from one IP gets exactly `burst` through, then 429; another IP is unaffected', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, processes: web(2, 16), queue: { max: 200 }, rate_limit: { per_ip: '2/m', burst: 12 } } },
  });
  const { port } = await startGateway(t, file);
  await ready(port);
  const burst = await Promise.all(Array.from({ length: 100 }, () => send(port, { path: '/', localAddress: '127.0.0.2' })));
  const statuses = burst.map((r) => r.status);
  assert.equal(statuses.filter((s) => s === 200).length, 12);
  assert.equal(statuses.filter((s) => s === 429).length, 88);
  const limited = burst.find((r) => r.status === 429)!;
  assert.equal(limited.headers['x-berth-reason'], 'rate-limited');
  // One token every 30s; the burst took a moment, so the wait is a little under 30s.
  const retryAfter = Number(limited.headers['retry-after']);
  assert.ok(retryAfter >= 25 && retryAfter <= 30, `Retry-After ${retryAfter}`);
  assert.match(limited.body, /429 Too Many Requests/);
  const other = await Promise.all(Array.from({ length: 5 }, () => send(port, { path: '/', localAddress: '127.0.0.3' })));
  assert.deepEqual(other.map((r) => r.status), [200, 200, 200, 200, 200]);
  // The health lane is never limited.
  assert.equal((await send(port, { path: '/_berth/health', localAddress: '127.0.0.2' })).status, 200);
});
