/**
 * The EdgeGrid signer against Akamai's published test vectors (AkamaiOPEN-edgegrid-python, testdata.json).
 * The vectors are authoritative: a mismatch is a bug in the signer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { edgeGridAuthorization, edgeGridTimestamp, type EdgeGridCredentials } from '../../src/flush/edgegrid.ts';

const BASE_URL = 'https://akaa-baseurl-xxxxxxxxxxx-xxxxxxxxxxxxx.luna.akamaiapis.net/';
const CREDS: EdgeGridCredentials = {
  host: 'akaa-baseurl-xxxxxxxxxxx-xxxxxxxxxxxxx.luna.akamaiapis.net',
  accessToken: 'akab-access-token-xxx-xxxxxxxxxxxxxxxx',
  clientToken: 'akab-client-token-xxx-xxxxxxxxxxxxxxxx',
  clientSecret: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=',
};
const MAX_BODY = 2048;
const NONCE = 'nonce-xx-xxxx-xxxx-xxxx-xxxxxxxxxxxx';
const TIMESTAMP = '20140321T19:34:21+0000';
const PREFIX =
  'EG1-HMAC-SHA256 client_token=akab-client-token-xxx-xxxxxxxxxxxxxxxx;access_token=akab-access-token-xxx-xxxxxxxxxxxxxxxx;' +
  `timestamp=${TIMESTAMP};nonce=${NONCE};`;

function sign(method: string, path: string, body = ''): string {
  return edgeGridAuthorization({ method, url: new URL(path, BASE_URL).href, body }, CREDS, { timestamp: TIMESTAMP, nonce: NONCE, maxBody: MAX_BODY });
}

const vectors: { name: string; method: string; path: string; body?: string; signature: string }[] = [
  { name: 'simple GET', method: 'GET', path: '/', signature: 'tL+y4hxyHxgWVD30X3pWnGKHcPzmrIF+LThiAOhMxYU=' },
  { name: 'GET with a query string', method: 'GET', path: '/testapi/v1/t1?p1=1&p2=2', signature: 'hKDH1UlnQySSHjvIcZpDMbQHihTQ0XyVAKZaApabdeA=' },
  { name: 'POST with a body', method: 'POST', path: '/testapi/v1/t3', body: 'datadatadatadatadatadatadatadata', signature: 'hXm4iCxtpN22m4cbZb4lVLW5rhX8Ca82vCFqXzSTPe4=' },
  { name: 'POST with a body over max_body (hashed up to max_body)', method: 'POST', path: '/testapi/v1/t3', body: 'd'.repeat(4096), signature: '6Q6PiTipLae6n4GsSIDTCJ54bEbHUBp+4MUXrbQCBoY=' },
  { name: 'POST with a body of exactly max_body', method: 'POST', path: '/testapi/v1/t3', body: 'd'.repeat(2048), signature: '6Q6PiTipLae6n4GsSIDTCJ54bEbHUBp+4MUXrbQCBoY=' },
  { name: 'POST with an empty body', method: 'POST', path: '/testapi/v1/t6', body: '', signature: '1gEDxeQGD5GovIkJJGcBaKnZ+VaPtrc4qBUHixjsPCQ=' },
  { name: 'PUT with a body (not hashed)', method: 'PUT', path: '/testapi/v1/t6', body: 'PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP', signature: 'GNBWEYSEWOLtu+7dD52da2C39aX/Jchpon3K/AmBqBU=' },
];

for (const v of vectors) {
  test(`Akamai test vector: ${v.name}`, () => {
    assert.equal(sign(v.method, v.path, v.body), `${PREFIX}signature=${v.signature}`);
  });
}

test('the method is upper-cased before signing', () => {
  assert.equal(sign('get', '/'), sign('GET', '/'));
});

test('a made timestamp is UTC in EdgeGrid form, and a made nonce differs between calls', () => {
  assert.match(edgeGridTimestamp(), /^\d{8}T\d\d:\d\d:\d\d\+0000$/);
  assert.equal(edgeGridTimestamp(new Date(Date.UTC(2014, 2, 21, 19, 34, 21))), TIMESTAMP);
  const req = { method: 'POST', url: BASE_URL + 'ccu/v3/invalidate/url/production', body: '{"objects":["https://example.com/"]}' };
  const a = edgeGridAuthorization(req, CREDS);
  const b = edgeGridAuthorization(req, CREDS);
  const field = (h: string, k: string): string => new RegExp(`[ ;]${k}=([^;]*)`).exec(h)![1];
  assert.match(field(a, 'timestamp'), /^\d{8}T\d\d:\d\d:\d\d\+0000$/);
  assert.ok(field(a, 'nonce').length > 0);
  assert.notEqual(field(a, 'nonce'), field(b, 'nonce'));
  assert.notEqual(a, b);
});

test('errors never show the credentials', () => {
  const secretish = { ...CREDS, clientToken: 'akab-client-token;leak', clientSecret: 'super-secret-value' };
  const messages: string[] = [];
  for (const run of [
    () => edgeGridAuthorization({ method: 'GET', url: BASE_URL, body: '' }, secretish),
    () => edgeGridAuthorization({ method: 'GET', url: 'not a url super-secret-value', body: '' }, { ...CREDS, clientSecret: 'super-secret-value' }),
    () => edgeGridAuthorization({ method: 'GET', url: BASE_URL, body: '' }, { ...CREDS, clientSecret: '' }),
    () => edgeGridAuthorization({ method: 'GET', url: BASE_URL, body: '' }, { ...CREDS, accessToken: 'akab access' }),
  ]) {
    assert.throws(run, (err: Error) => (messages.push(err.message), true));
  }
  for (const m of messages) {
    assert.doesNotMatch(m, /akab|super-secret|xxxxxxxx/);
  }
});
