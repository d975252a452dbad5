import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { probe } from '../../src/supervisor/probe.ts';
import type { UpstreamAddress } from '../../src/supervisor/types.ts';
import { tempDir } from './helpers.ts';

async function serve(t: { after(fn: () => unknown): void }, server: Server, where: number | string = 0): Promise<UpstreamAddress> {
  await new Promise<void>((resolve) => (typeof where === 'string' ? server.listen(where, resolve) : server.listen(where, '127.0.0.1', resolve)));
  t.after(() => new Promise((r) => server.close(r)));
  server.on('connection', (s) => t.after(() => s.destroy()));
  if (typeof where === 'string') return { kind: 'unix', path: where };
  return { kind: 'tcp', host: '127.0.0.1', port: (server.address() as { port: number }).port };
}

async function closedPort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise((r) => s.close(r));
  return port;
}

test('an http probe passes on 2xx and fails on anything else', async (t) => {
  const seen: string[] = [];
  const addr = await serve(t, createServer((req, res) => {
    seen.push(`${req.method} ${req.url} ${req.headers['user-agent']}`);
    const status = Number(req.url!.slice(1));
    res.writeHead(status).end();
  }));
  assert.equal(await probe(addr, '/200', 1000), true);
  assert.equal(await probe(addr, '/204', 1000), true);
  assert.equal(await probe(addr, '/301', 1000), false);
  assert.equal(await probe(addr, '/500', 1000), false);
  assert.equal(await probe(addr, '/503', 1000), false);
  assert.deepEqual(seen[0], 'GET /200 berth-health');
});

test('an http probe that gets no answer in time fails; so does a refused connection', async (t) => {
  const addr = await serve(t, createServer(() => { /* never answers */ }));
  assert.equal(await probe(addr, '/up', 150), false);
  const port = await closedPort();
  assert.equal(await probe({ kind: 'tcp', host: '127.0.0.1', port }, '/up', 1000), false);
  assert.equal(await probe({ kind: 'tcp', host: '127.0.0.1', port }, null, 1000), false);
});

test('without a path, an accepted connect passes (tcp and unix socket)', async (t) => {
  const addr = await serve(t, createServer(() => { /* never answers: only the connect matters */ }));
  assert.equal(await probe(addr, null, 1000), true);
  const dir = await tempDir(t);
  const sock = join(dir, 'a.sock');
  const unix = await serve(t, createServer((_req, res) => res.end('ok')), sock);
  assert.equal(await probe(unix, null, 1000), true);
  assert.equal(await probe(unix, '/up', 1000), true);
  assert.equal(await probe({ kind: 'unix', path: join(dir, 'missing.sock') }, null, 1000), false);
});
