import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { clientIp, socketAddress } from '../../src/proxy/client-ip.ts';

test('no trusted proxies: the socket address, whatever the header says', () => {
  assert.equal(clientIp(undefined, '10.0.0.9', 0), '10.0.0.9');
  assert.equal(clientIp('1.1.1.1', '10.0.0.9', 0), '10.0.0.9');
});

test('one trusted proxy: the rightmost header entry', () => {
  assert.equal(clientIp('203.0.113.7', '10.0.0.2', 1), '203.0.113.7');
  assert.equal(clientIp('198.51.100.1, 203.0.113.7', '10.0.0.2', 1), '203.0.113.7');
});

test('two trusted proxies: second from the right', () => {
  assert.equal(clientIp('203.0.113.7, 10.0.0.1', '10.0.0.2', 2), '203.0.113.7');
  assert.equal(clientIp('6.6.6.6, 203.0.113.7, 10.0.0.1', '10.0.0.2', 2), '203.0.113.7');
});

test('spoofed leftmost entries never win', () => {
  const spoofed = '1.2.3.4, 5.6.7.8, 9.9.9.9, 203.0.113.7';
  assert.equal(clientIp(spoofed, '10.0.0.2', 1), '203.0.113.7');
  assert.equal(clientIp(`${spoofed}, 10.0.0.1`, '10.0.0.2', 2), '203.0.113.7');
});

test('a chain shorter than the trusted count gives its leftmost entry', () => {
  assert.equal(clientIp('203.0.113.7', '10.0.0.2', 3), '203.0.113.7');
});

test('empty or missing header with trusted proxies falls back to the socket address', () => {
  assert.equal(clientIp(undefined, '10.0.0.2', 1), '10.0.0.2');
  assert.equal(clientIp('', '10.0.0.2', 1), '10.0.0.2');
  assert.equal(clientIp(' , ,', '10.0.0.2', 1), '10.0.0.2');
});

test('entries are trimmed; empty entries skipped; ports and brackets removed', () => {
  assert.equal(clientIp('  203.0.113.7  ,, ', '10.0.0.2', 1), '203.0.113.7');
  assert.equal(clientIp('203.0.113.7:5555', '10.0.0.2', 1), '203.0.113.7');
  assert.equal(clientIp('[2001:db8::1]:443', '10.0.0.2', 1), '2001:db8::1');
  assert.equal(clientIp('2001:db8::1', '10.0.0.2', 1), '2001:db8::1');
  assert.equal(clientIp('::ffff:203.0.113.7', '10.0.0.2', 1), '203.0.113.7');
});

test('socketAddress reads a real socket peer', async (t) => {
  const server = createServer((s) => s.end());
  t.after(() => server.close());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const peer = await new Promise<Socket>((resolve) => {
    server.once('connection', resolve);
    connect(port, '127.0.0.1');
  });
  assert.equal(socketAddress(peer), '127.0.0.1');
});
