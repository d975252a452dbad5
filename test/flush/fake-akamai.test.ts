/**
 * The fake Fast Purge server (test/helpers/fake-akamai.ts) checked against the real signer: it must accept
 * what the signer signs, and refuse what it would have to refuse from Akamai.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { edgeGridAuthorization, edgeGridTimestamp, type EdgeGridCredentials } from '../../src/flush/edgegrid.ts';
import { startFakeAkamai, type FakeAkamai } from '../helpers/fake-akamai.ts';

const SECRETS = {
  clientToken: 'akab-client-token-test-0000000000000000',
  clientSecret: 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=',
  accessToken: 'akab-access-token-test-0000000000000000',
};

const credsFor = (fake: FakeAkamai): EdgeGridCredentials => ({ host: fake.host, ...SECRETS });

interface SendOptions {
  path?: string;
  /** Sign this body but send `body`. */
  signedBody?: string;
  creds?: EdgeGridCredentials;
  timestamp?: string;
  method?: string;
}

async function send(fake: FakeAkamai, body: string, o: SendOptions = {}): Promise<Response> {
  const url = fake.baseUrl + (o.path ?? '/ccu/v3/invalidate/url/production');
  const method = o.method ?? 'POST';
  const authorization = edgeGridAuthorization({ method, url, body: o.signedBody ?? body }, o.creds ?? credsFor(fake), { timestamp: o.timestamp });
  return fetch(url, { method, headers: { authorization, 'content-type': 'application/json' }, body: method === 'GET' ? undefined : body });
}

const objects = (...urls: string[]): string => JSON.stringify({ objects: urls });

test('a well-signed purge is accepted and its objects count as purged', async (t) => {
  const fake = await startFakeAkamai(t, SECRETS);
  const res = await send(fake, objects('https://shop.example.com/', 'https://shop.example.com/a.css'));
  assert.equal(res.status, 201);
  const json = (await res.json()) as Record<string, unknown>;
  assert.equal(json.httpStatus, 201);
  assert.equal(json.detail, 'Request accepted');
  assert.equal(json.estimatedSeconds, 5);
  assert.match(String(json.purgeId), /^[0-9a-f-]{36}$/);
  assert.equal(typeof json.supportId, 'string');
  const res2 = await send(fake, objects('/ignored-arl'), { path: '/ccu/v3/delete/arl/staging' });
  assert.equal(res2.status, 201);
  await res2.arrayBuffer();
  assert.deepEqual(fake.purged(), ['https://shop.example.com/', 'https://shop.example.com/a.css', '/ignored-arl']);
  assert.deepEqual(fake.requests, [
    { method: 'POST', path: '/ccu/v3/invalidate/url/production', objects: ['https://shop.example.com/', 'https://shop.example.com/a.css'], authorized: true, status: 201 },
    { method: 'POST', path: '/ccu/v3/delete/arl/staging', objects: ['/ignored-arl'], authorized: true, status: 201 },
  ]);
});

test('a tampered body, wrong tokens, a wrong secret or a stale timestamp get 401', async (t) => {
  const fake = await startFakeAkamai(t, SECRETS);
  const cases: [string, Promise<Response>][] = [
    ['tampered body', send(fake, objects('https://evil.example.com/'), { signedBody: objects('https://shop.example.com/') })],
    ['wrong client token', send(fake, objects('https://shop.example.com/'), { creds: { ...credsFor(fake), clientToken: 'akab-other' } })],
    ['wrong access token', send(fake, objects('https://shop.example.com/'), { creds: { ...credsFor(fake), accessToken: 'akab-other' } })],
    ['wrong secret', send(fake, objects('https://shop.example.com/'), { creds: { ...credsFor(fake), clientSecret: 'not-the-secret' } })],
    ['stale timestamp', send(fake, objects('https://shop.example.com/'), { timestamp: edgeGridTimestamp(new Date(Date.now() - 10 * 60_000)) })],
    ['no authorization', fetch(fake.baseUrl + '/ccu/v3/invalidate/url/production', { method: 'POST', body: objects('https://shop.example.com/') })],
  ];
  for (const [name, pending] of cases) {
    const res = await pending;
    assert.equal(res.status, 401, name);
    const json = (await res.json()) as Record<string, unknown>;
    assert.doesNotMatch(JSON.stringify(json), new RegExp(SECRETS.clientSecret.slice(0, 12)), name);
  }
  assert.deepEqual(fake.purged(), []);
  assert.ok(fake.requests.every((r) => r.status === 401 && !r.authorized));
});

test('the first throttleFirst valid requests get 429 with Retry-After, then failFirst get 503, then success', async (t) => {
  const fake = await startFakeAkamai(t, SECRETS, { throttleFirst: 2, failFirst: 1, retryAfterSeconds: 7 });
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) {
    const res = await send(fake, objects(`https://shop.example.com/${i}`));
    statuses.push(res.status);
    if (res.status === 429) assert.equal(res.headers.get('retry-after'), '7');
    await res.arrayBuffer();
  }
  assert.deepEqual(statuses, [429, 429, 503, 201]);
  assert.deepEqual(fake.purged(), ['https://shop.example.com/3']);

  const one = await startFakeAkamai(t, SECRETS, { throttleFirst: 1 });
  const first = await send(one, objects('https://shop.example.com/x'));
  assert.equal(first.status, 429);
  assert.equal(first.headers.get('retry-after'), '1');
  await first.arrayBuffer();
  const second = await send(one, objects('https://shop.example.com/x'));
  assert.equal(second.status, 201);
  await second.arrayBuffer();
  assert.deepEqual(one.purged(), ['https://shop.example.com/x']);
});

test('a body over maxBodyBytes gets 413; a body that is not {objects: [strings]} gets 400', async (t) => {
  const fake = await startFakeAkamai(t, SECRETS, { maxBodyBytes: 1000 });
  const big = objects(...Array.from({ length: 50 }, (_, i) => `https://shop.example.com/page/${i}`));
  assert.ok(big.length > 1000);
  const tooLarge = await send(fake, big);
  assert.equal(tooLarge.status, 413);
  await tooLarge.arrayBuffer();
  for (const body of ['not json', '{"objects":"https://shop.example.com/"}', '{"objects":[1,2]}', '{}']) {
    const res = await send(fake, body);
    assert.equal(res.status, 400, body);
    await res.arrayBuffer();
  }
  // Default limit 50000 bytes.
  const dflt = await startFakeAkamai(t, SECRETS);
  const res = await send(dflt, objects('https://shop.example.com/' + 'x'.repeat(50_000)));
  assert.equal(res.status, 413);
  await res.arrayBuffer();
  assert.deepEqual([...fake.purged(), ...dflt.purged()], []);
  assert.deepEqual(fake.requests.map((r) => [r.status, r.authorized]), [[413, true], [400, true], [400, true], [400, true], [400, true]]);
});

test('other paths get 404 and other methods 405', async (t) => {
  const fake = await startFakeAkamai(t, SECRETS);
  const notFound = await send(fake, objects('https://shop.example.com/'), { path: '/ccu/v2/queues/default' });
  assert.equal(notFound.status, 404);
  await notFound.arrayBuffer();
  const wrongMethod = await send(fake, objects('https://shop.example.com/'), { method: 'PUT' });
  assert.equal(wrongMethod.status, 405);
  await wrongMethod.arrayBuffer();
  assert.deepEqual(fake.purged(), []);
});
