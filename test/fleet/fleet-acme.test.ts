/**
 * ACME in a fleet: three nodes on one PostgreSQL database, one pebble. One node orders each host's
 * certificate and every node serves it. Pebble validates through a small TCP relay that always picks a
 * node that is NOT the one ordering, so every validation is answered from an answer another node shared
 * through the store, for HTTP-01 and TLS-ALPN-01 alike. No validation is faked.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server } from 'node:net';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, fixtureApp, tempDir, waitFor } from '../helpers/gateway.ts';
import { h1Tls, sameFingerprint } from '../helpers/https.ts';
import { freshDatabase, POSTGRES_SKIP } from '../helpers/postgres.ts';
import { freePort, pebbleMissing, startPebble } from '../tls/pebble.ts';
import { startNode, type FleetNode } from './fleet-nodes.ts';

const missing = pebbleMissing();
if (missing && process.env.CI === 'true') throw new Error(`CI=true but ${missing}`);
const skip = POSTGRES_SKIP ?? missing ?? false;

/** A TCP relay on `port` to the port `target()` names when a connection arrives. */
async function relay(t: TestContext, port: number, target: () => number): Promise<{ relayed: number[] }> {
  const relayed: number[] = [];
  const server: Server = createServer((client) => {
    const to = target();
    relayed.push(to);
    const upstream = connect(to, '127.0.0.1');
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise<void>((r) => {
    server.close(() => r());
  }));
  return { relayed };
}

for (const challenge of ['http-01', 'tls-alpn-01'] as const) {
  test(`${challenge}: a certificate one node orders is served by all three, and the CA's validation is answered by another node`, { skip }, async (t) => {
    const dir = await tempDir(t, 'berth-fleet-acme-');
    const url = await freshDatabase(t);
    const [relayHttp, relayTls] = [await freePort(), await freePort()];
    const pebble = await startPebble(t, { dir, httpPort: relayHttp, tlsPort: relayTls });
    const caRoot = join(dir, 'pebble-directory-ca.pem');
    await writeFile(caRoot, pebble.caRoot);
    const src = await fixtureApp(dir);
    const host = `shop.${challenge}.fleet.test`;
    const apps = { shop: { source: src, hosts: [host], processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } }, health: { path: '/up', interval: '250ms' }, tls: { acme: true } } };
    const acme = { directory: pebble.directoryUrl, email: 'ops@berth.test', ca_root: caRoot, challenge };
    const names = ['node-a', 'node-b', 'node-c'];
    const ports = await Promise.all(names.map(async () => ({ http: await freePort(), tls: await freePort() })));
    const nodes: FleetNode[] = [];
    const orderer = () => nodes.find((n) => n.logs.some((l) => l.msg === 'ACME order started'));
    const other = (kind: 'http' | 'tls') => () => {
      const busy = orderer();
      const i = nodes.findIndex((n) => n !== busy);
      return ports[i < 0 ? 0 : i]![kind];
    };
    const relays = { http: await relay(t, relayHttp, other('http')), tls: await relay(t, relayTls, other('tls')) };
    nodes.push(...(await Promise.all(names.map((name, i) => startNode(t, dir, url, name, apps, { acme, listen: [`127.0.0.1:${ports[i]!.http}`, { address: `127.0.0.1:${ports[i]!.tls}`, tls: true }] })))));
    const root = await pebble.issuingRoot();

    // Every node serves the one certificate.
    const served = await waitFor(async () => {
      const all = await Promise.all(ports.map((p) => h1Tls(p.tls, { servername: host, ca: root, path: '/' }).catch(() => null)));
      return all.every((r) => r?.status === 200) && all.every((r) => sameFingerprint(r!.fingerprint, all[0]!.fingerprint)) ? all : null;
    }, { timeoutMs: 90_000, intervalMs: 500, message: `all three serving a certificate for ${host}` });
    t.diagnostic(`served ${served[0]!.fingerprint.slice(0, 20)}… by all three; relayed to ports ${relays.http.relayed.concat(relays.tls.relayed).join(', ')}`);
    const ordering = nodes.filter((n) => n.logs.some((l) => l.msg === 'ACME certificate obtained'));
    assert.equal(ordering.length, 1, 'exactly one node obtained the certificate');
    const validated = (challenge === 'http-01' ? relays.http : relays.tls).relayed;
    const ordererIndex = nodes.indexOf(ordering[0]!);
    assert.ok(validated.length > 0, 'the CA validated through the relay');
    assert.ok(validated.every((p) => p !== ports[ordererIndex]![challenge === 'http-01' ? 'http' : 'tls']), 'every validation reached a node that did not order');
    for (const n of nodes) assert.ok(!n.logs.some((l) => JSON.stringify(l).includes('PRIVATE KEY')), `${n.name}: no key in a log line`);
  });
}
