import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorPages, escapeHtml, prefersJson, type ErrorResponse } from '../../src/proxy/error-pages.ts';
import { appConfig, backend, entry, fetchRaw, gate, processConfig, refusedAddress, startProxy, TestGeneration, waitFor } from './fixtures.ts';

async function releaseWith(t: TestContext, files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-pages-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return dir;
}

test('pages.error is a template for every 5xx of the app: 502 and its queue 503', async (t) => {
  const dir = await releaseWith(t, { 'error.html': '<h1>{{title}}</h1><p>{{status}} {{reason}} {{request_id}} {{message}}</p>' });
  const pages = { maintenance: null, readOnly: null, error: 'error.html' };
  const dead = new TestGeneration({ id: 'a#1', app: 'a', releaseId: 'r1', releaseDir: dir });
  dead.addPool('web', 1, [await refusedAddress()]);
  const hold = gate();
  const slowBe = await backend(t, (_req, res) => void hold.promise.then(() => res.end('late')));
  t.after(() => hold.open());
  const busy = new TestGeneration({ id: 'b#1', app: 'b', releaseId: 'r1', releaseDir: dir });
  busy.addPool('web', 1, [slowBe.address]);
  const { url } = await startProxy(t, [
    entry(appConfig('a', { hosts: ['a.test'], pages }), dead),
    entry(appConfig('b', { hosts: ['b.test'], pages, processes: { web: processConfig('web', 1, 1) }, queue: { max: 0, timeoutMs: 1000 } }), busy),
  ]);
  const bad = await fetchRaw(url, { headers: { host: 'a.test', 'x-request-id': 'req-<1>' } });
  assert.equal(bad.status, 502);
  assert.match(bad.text, /^<h1>502 Bad Gateway<\/h1><p>502 upstream-unreachable [^<]+ The application could not be reached\.<\/p>$/);
  const first = fetchRaw(url, { headers: { host: 'b.test' } });
  await waitFor(() => slowBe.requests.length === 1, 'the slow request');
  const full = await fetchRaw(url, { headers: { host: 'b.test' } });
  assert.equal(full.status, 503);
  assert.equal(full.headers['x-berth-reason'], 'queue-full');
  assert.match(full.text, /^<h1>503 Service Unavailable<\/h1><p>503 queue-full /);
  hold.open();
  assert.equal((await first).text, 'late');
});

test('the no-route 404 and an app without a page use the built-in design, which echoes nothing of the request', async (t) => {
  const { url } = await startProxy(t, [entry(appConfig('a', { hosts: ['a.test'] }), null)]);
  const r = await fetchRaw(`${url}/<script>`, { headers: { host: 'evil.test' } });
  assert.equal(r.status, 404);
  assert.match(r.text, /<h1>404 Not Found<\/h1>/);
  assert.ok(!r.text.includes('<script>') && !r.text.includes('evil.test'));
});

/** Runs sendRaw on the server side of a real TCP connection and returns what the client read. */
async function raw(t: TestContext, pages: ErrorPages, accept: string | undefined, e: ErrorResponse): Promise<string> {
  const server = createNetServer();
  t.after(() => server.close());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
  t.after(() => client.destroy());
  const socket = await accepted;
  let text = '';
  client.on('data', (c) => (text += c));
  const ended = new Promise<void>((r) => client.once('close', () => r()));
  pages.sendRaw({ headers: accept === undefined ? {} : { accept } } as IncomingMessage, socket, e);
  await ended;
  return text;
}

test('sendRaw writes a whole HTTP/1.1 response on an upgraded socket and closes it', async (t) => {
  const pages = new ErrorPages();
  const e: ErrorResponse = { status: 429, reason: 'rate-limited', retryAfter: 3, requestId: 'r-1', page: null, close: true };
  const html = await raw(t, pages, undefined, e);
  const [head, body] = html.split('\r\n\r\n');
  assert.match(head, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
  assert.match(head, /\r\nretry-after: 3(\r\n|$)/);
  assert.match(head, /\r\nconnection: close(\r\n|$)/);
  assert.match(head, /\r\nx-berth-reason: rate-limited(\r\n|$)/);
  assert.equal(Number(/content-length: (\d+)/.exec(head)![1]), Buffer.byteLength(body));
  assert.match(body, /429 Too Many Requests/);
  const json = await raw(t, pages, 'application/json', { ...e, status: 503, reason: 'maintenance', message: 'soon', mode: 'maintenance' });
  assert.match(json, /\r\nx-berth-mode: maintenance\r\n/);
  assert.deepEqual(JSON.parse(json.split('\r\n\r\n')[1]), { error: { status: 503, reason: 'maintenance', message: 'soon' } });
});

test('a HEAD gets the status and headers of an error, without its body', async (t) => {
  const server = createServer((req, res) => new ErrorPages().send(req, res, { status: 503, reason: 'queue-full', retryAfter: 1, requestId: null, page: null, close: false }));
  t.after(() => server.close());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const r = await fetchRaw(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, { method: 'HEAD' });
  assert.equal(r.status, 503);
  assert.ok(Number(r.headers['content-length']) > 0);
  assert.equal(r.body.length, 0);
});

test('escapeHtml and prefersJson', () => {
  assert.equal(escapeHtml(`<a href="x">'&'</a>`), '&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
  assert.equal(prefersJson(undefined), false);
  assert.equal(prefersJson('*/*'), false);
  assert.equal(prefersJson('application/json'), true);
  assert.equal(prefersJson('application/problem+json'), true);
  assert.equal(prefersJson('text/html, application/json'), false);
  assert.equal(prefersJson('text/html;q=0.5, application/json'), true);
  assert.equal(prefersJson('application/json;q=0'), false);
});
