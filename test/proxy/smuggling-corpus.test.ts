/**
 * Security issue #10, acceptance: a smuggling and header corpus against a real gateway.
 *
 * A real in-process gateway (startGateway) runs a real app process, `pipe.mjs`, that pipes each of its
 * connections byte for byte to a raw recording upstream in this process (raw-upstream.ts). So the
 * recorder sees exactly the bytes berth sends an app, one recorder connection per berth connection, and
 * parses them with a strict HTTP/1.1 parser. Its answers name the request they answer (`x-seen: <id>`).
 *
 * Hundreds of hostile requests, generated below, go to the front door on raw sockets: CL.TE, TE.CL and
 * TE.TE obfuscations, duplicate lengths, obs-fold, bare LF, NUL and control characters, absolute-form
 * targets, upgrades with a body, refused upgrades followed by pipelined requests, duplicate Host, and
 * underscored names. Every request of case `i` targets `/c<i>/...`, smuggled ones included. For every
 * case:
 * - the requests the app saw for the case are exactly those whose answers berth relayed to the client
 *   (so the app never saw a request berth did not see as one, and berth relayed no answer to a request
 *   the app did not get);
 * - when the app saw none, the client got a 4xx from berth;
 * and across the corpus every byte the app received parses unambiguously, no request carries two Host
 * headers, an underscored name, or a Host other than the routed one.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startGateway, tempDir, waitFor, writeConfig, http } from '../helpers/gateway.ts';
import { exchange, header, headerAll, RawUpstream, responseHeader, seenResponder, WS_HEAD as WS, type Exchange, type Responder } from './raw-upstream.ts';

const PIPE_APP = `
import { connect, createServer } from 'node:net';
const target = Number(process.env.RECORDER_PORT);
createServer((client) => {
  const up = connect(target, '127.0.0.1');
  client.pipe(up);
  up.pipe(client);
  const drop = () => { client.destroy(); up.destroy(); };
  client.on('error', drop);
  up.on('error', drop);
  client.on('close', drop);
  up.on('close', drop);
}).listen(Number(process.env.PORT), '127.0.0.1');
`;

interface Case {
  id: number;
  family: string;
  name: string;
  bytes: Buffer;
}

const H = 'Host: shop.test\r\n';

/** Builds the corpus. `m` is the case's path marker; every case ends with a `Connection: close` request. */
function corpus(): Case[] {
  const cases: Case[] = [];
  const add = (family: string, name: string, build: (m: string) => string) => {
    const id = cases.length + 1;
    const m = `/c${id}`;
    const end = `GET ${m}/end HTTP/1.1\r\n${H}Connection: close\r\n\r\n`;
    cases.push({ id, family, name, bytes: Buffer.from(build(m) + end, 'latin1') });
  };
  const smuggled = (m: string) => `GET ${m}/smuggled HTTP/1.1\r\n${H}\r\n`;

  // ---- Transfer-Encoding obfuscations (TE.TE), each in CL.TE, TE.CL and TE-only framings -----------
  const teValues = [
    'chunked', 'Chunked', 'CHUNKED', 'chunkeD', ' chunked', 'chunked ', '\tchunked', 'chunked\t', '  chunked  ',
    'xchunked', 'chunkedx', 'chunk', 'chunked-false', 'identity', 'identity, chunked', 'chunked, identity',
    'chunked,identity', 'gzip, chunked', 'chunked, gzip', 'chunked, chunked', 'chunked,chunked', '"chunked"',
    "'chunked'", 'chunked;q=1', 'chunked ;', 'chu nked', ',chunked', 'chunked,', ' , chunked', 'x, chunked',
    'chunked, x', '\x0bchunked', '\x0cchunked', 'chunked\x0b', 'chunked\x00', '\x00chunked', 'ch\x00unked',
    'chunked\r', '\xa0chunked', 'chunked\xa0', 'chunked\x85', 'chünked', 'CHUNKED, IDENTITY', 'compress, gzip, chunked',
  ];
  const teNames = [
    'transfer-encoding', 'TRANSFER-ENCODING', 'Transfer-encoding', 'Transfer-Encoding ', 'Transfer-Encoding\t',
    'Transfer_Encoding', 'Transfer-Encodings', 'XTransfer-Encoding', 'Transfer-\x00Encoding', 'Transfer-Encoding\x0b',
    '\x0bTransfer-Encoding', 'Transfer Encoding', 'Transfer-Encoding\x00',
  ];
  // CL.TE: a front end that honours the length sends the whole body; one that honours chunked sees a
  // smuggled request after the last chunk.
  const clTe = (name: string, value: string) => (m: string) => {
    const body = `0\r\n\r\n${smuggled(m)}`;
    return `POST ${m}/a HTTP/1.1\r\n${H}Content-Length: ${body.length}\r\n${name}: ${value}\r\n\r\n${body}`;
  };
  const teCl = (name: string, value: string) => (m: string) => {
    // Honouring the length (4 bytes: the chunk size line) leaves a smuggled request; honouring chunked
    // reads one chunk holding that request text, then the last chunk.
    const inner = `GET ${m}/smuggled HTTP/1.1\r\n${H}X: `;
    const size = inner.length.toString(16);
    return `POST ${m}/a HTTP/1.1\r\n${H}${name}: ${value}\r\nContent-Length: ${size.length + 2}\r\n\r\n${size}\r\n${inner}\r\n0\r\n\r\n`;
  };
  const teOnly = (name: string, value: string) => (m: string) => `POST ${m}/a HTTP/1.1\r\n${H}${name}: ${value}\r\n\r\n5\r\nhello\r\n0\r\n\r\n${smuggled(m)}`;
  for (const v of teValues) {
    add('CL.TE', `TE value ${JSON.stringify(v)}`, clTe('Transfer-Encoding', v));
    add('TE.CL', `TE value ${JSON.stringify(v)}`, teCl('Transfer-Encoding', v));
    add('TE', `TE value ${JSON.stringify(v)}`, teOnly('Transfer-Encoding', v));
    // TE.TE: a clean chunked header plus an obfuscated one, in both orders.
    add('TE.TE', `chunked then ${JSON.stringify(v)}`, (m) => {
      const body = `0\r\n\r\n${smuggled(m)}`;
      return `POST ${m}/a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: ${v}\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    });
    add('TE.TE', `${JSON.stringify(v)} then chunked`, (m) => `POST ${m}/a HTTP/1.1\r\n${H}Transfer-Encoding: ${v}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled(m)}`);
  }
  for (const n of teNames) {
    add('CL.TE', `TE name ${JSON.stringify(n)}`, clTe(n, 'chunked'));
    add('TE.CL', `TE name ${JSON.stringify(n)}`, teCl(n, 'chunked'));
    add('TE', `TE name ${JSON.stringify(n)}`, teOnly(n, 'chunked'));
  }
  // Chunk-size tricks with a clean header.
  for (const size of ['5 ', '5;ext=1', '05', '0x5', '+5', '5\t', ' 5', '0000000005', 'fffffffffffffffff5', '5\x00']) {
    add('chunk', `size ${JSON.stringify(size)}`, (m) => `POST ${m}/a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n${size}\r\nhello\r\n0\r\n\r\n${smuggled(m)}`);
  }
  for (const last of ['0\r\n\r\n', '0\n\n', '0\r\nX-Trailer: 1\r\n\r\n', '00\r\n\r\n', '0;x\r\n\r\n']) {
    add('chunk', `last chunk ${JSON.stringify(last)}`, (m) => `POST ${m}/a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n${last}${smuggled(m)}`);
  }

  // ---- Content-Length ----------------------------------------------------------------------------------
  const clHeaders = [
    ['Content-Length: 5', 'Content-Length: 5'], ['Content-Length: 5', 'Content-Length: 6'], ['Content-Length: 6', 'Content-Length: 5'],
    ['Content-Length: 5', 'content-length: 5'], ['Content-Length: 5, 5'], ['Content-Length: 5,6'], ['Content-Length: +5'],
    ['Content-Length: -5'], ['Content-Length: 05'], ['Content-Length: 0x5'], ['Content-Length: 5.0'], ['Content-Length: 5e0'],
    ['Content-Length:'], ['Content-Length: 5 '], ['Content-Length:  5'], ['Content-Length: 5\x00'], ['Content-Length: 5\x0b'],
    ['Content-Length: 99999999999999999999999'], ['Content-Length : 5'], ['Content-Length\t: 5'], ['Content_Length: 5'],
    ['Content-Length: 5', 'Content-Length: 0'], ['Content-Length: 0', 'Content-Length: 5'], ['Content-Length: 5', 'Content_Length: 0'],
  ];
  for (const hs of clHeaders) {
    add('CL', hs.join(' + '), (m) => `POST ${m}/a HTTP/1.1\r\n${H}${hs.join('\r\n')}\r\n\r\nhello${smuggled(m)}`);
  }

  // ---- obs-fold -----------------------------------------------------------------------------------------
  const folds = [
    'X-A: 1\r\n 2', 'X-A: 1\r\n\t2', 'Transfer-Encoding:\r\n chunked', 'Transfer-Encoding: identity\r\n ,chunked',
    'Content-Length:\r\n 5', 'X-A: 1\r\n Transfer-Encoding: chunked', ' X-Leading: 1', '\tX-Leading: 1', 'Host: shop.test\r\n evil.example',
  ];
  for (const f of folds) {
    add('obs-fold', JSON.stringify(f), (m) => `POST ${m}/a HTTP/1.1\r\n${H}${f}\r\nContent-Length: 5\r\n\r\nhello${smuggled(m)}`);
  }

  // ---- bare LF / bare CR ---------------------------------------------------------------------------------
  add('bare-LF', 'request line', (m) => `GET ${m}/a HTTP/1.1\n${H}\r\n${smuggled(m)}`);
  add('bare-LF', 'one header', (m) => `GET ${m}/a HTTP/1.1\r\nHost: shop.test\nX-A: 1\r\n\r\n${smuggled(m)}`);
  add('bare-LF', 'everywhere', (m) => `GET ${m}/a HTTP/1.1\nHost: shop.test\nX-A: 1\n\n${smuggled(m)}`);
  add('bare-LF', 'end of head', (m) => `GET ${m}/a HTTP/1.1\r\n${H}\n${smuggled(m)}`);
  add('bare-LF', 'after TE', (m) => `POST ${m}/a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\nContent-Length: 5\r\n\r\n0\r\n\r\n${smuggled(m)}`);
  add('bare-LF', 'chunk size line', (m) => `POST ${m}/a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n${smuggled(m)}`);
  add('bare-CR', 'in a header', (m) => `GET ${m}/a HTTP/1.1\r\n${H}X-A: 1\rTransfer-Encoding: chunked\r\n\r\n${smuggled(m)}`);
  add('bare-CR', 'request line', (m) => `GET ${m}/a HTTP/1.1\r${H}\r\n${smuggled(m)}`);
  add('bare-CR', 'end of head', (m) => `GET ${m}/a HTTP/1.1\r\n${H}\r\r\n${smuggled(m)}`);

  // ---- NUL and control characters ---------------------------------------------------------------------------
  for (let c = 0; c < 0x20; c++) {
    if (c === 0x0a || c === 0x0d) continue;
    const ch = String.fromCharCode(c);
    add('ctl-name', `0x${c.toString(16)} in a name`, (m) => `GET ${m}/a HTTP/1.1\r\n${H}X-A${ch}b: 1\r\n\r\n`);
    if (c !== 0x09) add('ctl-value', `0x${c.toString(16)} in a value`, (m) => `GET ${m}/a HTTP/1.1\r\n${H}X-A: a${ch}b\r\n\r\n`);
    add('ctl-target', `0x${c.toString(16)} in the target`, (m) => `GET ${m}/a${ch}b HTTP/1.1\r\n${H}\r\n`);
  }
  add('ctl-name', '0x7f in a name', (m) => `GET ${m}/a HTTP/1.1\r\n${H}X-A\x7fb: 1\r\n\r\n`);
  add('ctl-value', '0x7f in a value', (m) => `GET ${m}/a HTTP/1.1\r\n${H}X-A: a\x7fb\r\n\r\n`);
  add('ctl-method', 'NUL in the method', (m) => `G\x00ET ${m}/a HTTP/1.1\r\n${H}\r\n`);
  add('ctl-version', 'NUL in the version', (m) => `GET ${m}/a HTTP/1.1\x00\r\n${H}\r\n`);

  // ---- absolute-form targets -------------------------------------------------------------------------------
  for (const [target, host] of [
    ['http://shop.test{m}/a', 'evil.example'], ['http://shop.test{m}/a', 'shop.test'], ['http://shop.test:80{m}/a', 'evil.example'],
    ['https://shop.test{m}/a', 'evil.example'], ['http://SHOP.TEST{m}/a', 'evil.example'], ['http://evil.example{m}/a', 'shop.test'],
    ['http://shop.test@evil.example{m}/a', 'shop.test'], ['http://evil.example@shop.test{m}/a', 'shop.test'], ['http://{m}/a', 'shop.test'],
    ['HTTP://shop.test{m}/a', 'evil.example'], ['ftp://shop.test{m}/a', 'shop.test'], ['//shop.test{m}/a', 'shop.test'],
  ]) {
    add('absolute', `${target} with Host ${host}`, (m) => `GET ${target.replace('{m}', m)} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
  }
  add('absolute', 'upgrade, Host evil.example', (m) => `GET http://shop.test${m}/ws HTTP/1.1\r\nHost: evil.example\r\n${WS}\r\n`);

  // ---- upgrades: with a body; refused, then pipelined requests ------------------------------------------------
  add('upgrade-body', 'Content-Length', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}Content-Length: ${smuggled(m).length}\r\n\r\n${smuggled(m)}`);
  add('upgrade-body', 'Transfer-Encoding', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}Transfer-Encoding: chunked\r\n\r\n${smuggled(m).length.toString(16)}\r\n${smuggled(m)}\r\n0\r\n\r\n`);
  add('upgrade-body', 'TE and CL', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${smuggled(m)}`);
  add('upgrade-body', 'obfuscated TE', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${smuggled(m)}`);
  add('upgrade-body', 'Content-Length: 0 (no body)', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}Content-Length: 0\r\n\r\n${smuggled(m)}`);
  add('upgrade-refused', 'then a POST', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}\r\nPOST ${m}/smuggled HTTP/1.1\r\n${H}X-Forwarded-For: 6.6.6.6\r\nContent-Length: 0\r\n\r\n`);
  add('upgrade-refused', 'then two GETs', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}\r\n${smuggled(m)}${smuggled(m)}`);
  add('upgrade-refused', 'then a chunked POST', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}\r\nPOST ${m}/smuggled HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`);
  add('upgrade-refused', 'then another upgrade', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}\r\nGET ${m}/smuggled HTTP/1.1\r\n${H}${WS}\r\n`);
  add('upgrade-refused', 'then a request to the health lane', (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${WS}\r\nGET /_berth/health?${m.slice(1)}/smuggled HTTP/1.1\r\n${H}\r\n`);
  add('upgrade-method', 'POST with Upgrade and a body', (m) => `POST ${m}/ws HTTP/1.1\r\n${H}${WS}Content-Length: 5\r\n\r\nhello${smuggled(m)}`);
  add('upgrade-other', 'h2c with a body', (m) => `POST ${m}/a HTTP/1.1\r\n${H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 5\r\n\r\nhello${smuggled(m)}`);

  // ---- duplicate Host -----------------------------------------------------------------------------------------
  for (const second of ['Host: evil.example', 'host: shop.test', 'HOST: evil.example', 'hOsT: shop.test', 'Host:', 'Host: shop.test, evil.example']) {
    add('dup-host', second, (m) => `GET ${m}/a HTTP/1.1\r\n${H}${second}\r\n\r\n`);
    add('dup-host', `upgrade, ${second}`, (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${second}\r\n${WS}\r\n`);
  }
  add('dup-host', 'no Host', (m) => `GET ${m}/a HTTP/1.1\r\n\r\n`);

  // ---- underscores -----------------------------------------------------------------------------------------------
  for (const u of ['X_Forwarded_For: 6.6.6.6', 'X_Real_IP: 6.6.6.6', 'Content_Length: 5', 'Transfer_Encoding: chunked', 'Host_: evil.example', '_: x', 'my_header: a']) {
    add('underscore', u, (m) => `POST ${m}/a HTTP/1.1\r\n${H}${u}\r\nContent-Length: 0\r\n\r\n`);
    add('underscore', `upgrade, ${u}`, (m) => `GET ${m}/ws HTTP/1.1\r\n${H}${u}\r\n${WS}\r\n`);
  }

  // ---- pipelining controls: ordinary requests that must pass ---------------------------------------------------
  add('control', 'GET', (m) => `GET ${m}/a HTTP/1.1\r\n${H}\r\n`);
  add('control', 'POST with a length', (m) => `POST ${m}/a HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\nhello`);
  add('control', 'POST chunked', (m) => `POST ${m}/a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`);
  add('control', 'two pipelined GETs', (m) => `GET ${m}/a HTTP/1.1\r\n${H}\r\nGET ${m}/b HTTP/1.1\r\n${H}\r\n`);
  return cases;
}

/** The app refuses upgrades (404, connection kept open, as in the finding) and answers everything else. */
const app: Responder = (req, conn) => {
  if (header(req, 'upgrade') !== undefined) return { data: `HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: keep-alive\r\nx-seen: ${req.id}\r\n\r\nnot found` };
  return seenResponder(req, conn);
};

test('smuggling and header corpus, buffered (the default): the app sees exactly the requests berth accepted, each unambiguous', async (t) => {
  await runCorpus(t, true);
});

test('smuggling and header corpus, buffering off: the app completes no request berth did not accept', async (t) => {
  await runCorpus(t, false);
});

/**
 * With buffering on, a request reaches the app only once berth has read it whole, so the app's requests
 * and berth's forwarded ones are the same. With buffering off, berth forwards a request's head before its
 * body is read, and a body that turns out malformed (a bad chunk size) cuts the app connection: the app
 * then holds a truncated request it never completes, and the client gets a 400. That is allowed there,
 * and only that.
 */
async function runCorpus(t: TestContext, buffered: boolean): Promise<void> {
  const started = Date.now();
  const recorder = await RawUpstream.start(t, app);
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'pipe.mjs'), PIPE_APP);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    // The proxy's access log says which requests berth forwarded.
    log_levels: { root: 'error', proxy: 'info' },
    apps: {
      shop: {
        hosts: ['shop.test'],
        source: src,
        env: { RECORDER_PORT: String(recorder.port) },
        processes: { web: { command: `"${process.execPath}" pipe.mjs`, instances: 1, concurrency: 64 } },
        health: { path: '/health-probe', interval: '5s' },
        queue: { max: 1000, timeout: '20s' },
        buffering: { requests: buffered, responses: buffered },
      },
    },
  });
  const { port, sink } = await startGateway(t, file);
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });

  const cases = corpus();
  assert.ok(cases.length >= 300, `a large corpus (${cases.length})`);
  const results = new Map<number, Exchange>();
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const c = cases[next++];
      results.set(c.id, await exchange(port, c.bytes, { expect: Number.POSITIVE_INFINITY, timeoutMs: 4_000 }));
    }
  };
  await Promise.all(Array.from({ length: 48 }, worker));
  const marker = (path: string): number | null => {
    const m = /\/c(\d+)\//.exec(path);
    return m === null ? null : Number(m[1]);
  };
  /** Paths berth forwarded to the app (its access log: lines naming an instance), per case. */
  const forwardedPaths = (): Map<number, { path: string; status: number }[]> => {
    const out = new Map<number, { path: string; status: number }[]>();
    for (const l of sink.lines) {
      if (l.msg !== 'request' || l.instance === null || l.instance === undefined) continue;
      const c = marker(String(l.path));
      if (c !== null) out.set(c, [...(out.get(c) ?? []), { path: String(l.path), status: Number(l.status) }]);
    }
    return out;
  };
  const appRequests = recorder.requests.filter((q) => q.target !== '/health-probe');
  // Access lines are written once both sides of a request are over.
  await waitFor(() => [...forwardedPaths().values()].reduce((n, l) => n + l.length, 0) >= appRequests.length || null, { timeoutMs: 5_000, message: 'access log lines' }).catch(() => {});
  const forwarded = forwardedPaths();

  const failures: string[] = [];
  const byCase = new Map<number, number[]>();
  const pathsByCase = new Map<number, string[]>();
  for (const q of appRequests) {
    const c = marker(q.target);
    if (c === null) {
      failures.push(`app saw an unmarked request ${q.method} ${JSON.stringify(q.target)}`);
      continue;
    }
    byCase.set(c, [...(byCase.get(c) ?? []), q.id]);
    pathsByCase.set(c, [...(pathsByCase.get(c) ?? []), q.target]);
  }
  const outcomes = new Map<string, number>();
  for (const c of cases) {
    const ex = results.get(c.id)!;
    const label = `#${c.id} ${c.family} ${c.name}`;
    const relayed = ex.responses.map((r) => responseHeader(r, 'x-seen')).filter((s): s is string => s !== undefined).map(Number).sort((a, b) => a - b);
    const seen = (byCase.get(c.id) ?? []).sort((a, b) => a - b);
    // Nothing smuggled past berth: every request the app completed is one berth forwarded, once.
    const appPaths = (pathsByCase.get(c.id) ?? []).sort();
    const berthLines = forwarded.get(c.id) ?? [];
    const left = berthLines.slice();
    for (const p of appPaths) {
      const i = left.findIndex((l) => l.path === p);
      if (i < 0) failures.push(`${label}: the app saw ${p}, which berth did not forward (${JSON.stringify(berthLines)})`);
      else left.splice(i, 1);
    }
    // A forwarded request the app did not complete was cut short: its client went away first (499; e.g.
    // node's 400 for the garbage behind it closed the connection before the request went out), or, with
    // buffering off, its body turned out malformed after its head had gone (then the client got a 4xx).
    const gateway4xx = ex.responses.some((r) => r.status >= 400 && r.status < 500 && responseHeader(r, 'x-seen') === undefined);
    for (const l of left) {
      if (l.status === 499 || (!buffered && gateway4xx)) continue;
      failures.push(`${label}: berth forwarded ${l.path} (status ${l.status}) but the app never got it whole`);
    }
    // Every answer the client got from the app answers a request the app saw (a client whose pipeline
    // turned to garbage may get a 400 before an earlier request's answer: that answer is lost, not mixed).
    for (const id of relayed) if (!seen.includes(id)) failures.push(`${label}: client got the answer to request ${id}, which is not this case's`);
    if (seen.length === 0 && !gateway4xx) failures.push(`${label}: the app saw nothing and the client got no 4xx (${JSON.stringify(ex.raw.toString('latin1').slice(0, 80))})`);
    if (!ex.closed) failures.push(`${label}: the connection was still open after 4 s`);
    const kind = seen.length === 0 ? 'refused' : gateway4xx ? 'partly' : 'accepted';
    outcomes.set(`${c.family} ${kind}`, (outcomes.get(`${c.family} ${kind}`) ?? 0) + 1);
    if (c.family === 'control' && (seen.length === 0 || gateway4xx)) failures.push(`${label}: an ordinary request was refused`);
  }
  for (const conn of recorder.conns) {
    if (conn.garbage !== null) failures.push(`app connection ${conn.id}: bytes that do not parse: ${conn.garbage}`);
    if (buffered && conn.pending.length > 0 && conn.closed) failures.push(`app connection ${conn.id}: an incomplete request was left: ${JSON.stringify(conn.pending.toString('latin1').slice(0, 80))}`);
  }
  for (const q of recorder.requests) {
    if (q.target === '/health-probe') continue;
    const hosts = headerAll(q, 'host');
    if (hosts.length !== 1 || hosts[0].toLowerCase().replace(/:80$/, '') !== 'shop.test') failures.push(`request ${q.id} ${q.target}: Host ${JSON.stringify(hosts)}`);
    const underscored = q.headers.filter(([n]) => n.includes('_'));
    if (underscored.length > 0) failures.push(`request ${q.id} ${q.target}: underscored names ${JSON.stringify(underscored)}`);
    if (q.target.includes('/smuggled') && header(q, 'x-forwarded-for') !== '127.0.0.1') failures.push(`request ${q.id} ${q.target}: X-Forwarded-For ${header(q, 'x-forwarded-for')}`);
  }
  const elapsed = Date.now() - started;
  t.diagnostic(`${cases.length} cases in ${elapsed} ms; app saw ${recorder.requests.length} requests on ${recorder.conns.length} connections`);
  t.diagnostic([...outcomes].sort().map(([k, n]) => `${k}: ${n}`).join(', '));
  assert.deepEqual(failures, []);
  assert.ok(elapsed < 30_000, `the corpus runs in under 30 s (${elapsed} ms)`);
}
