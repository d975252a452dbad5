/**
 * bench/proxy-tls.ts in its short mode, berth only (nginx is not part of CI): every figure's path works
 * end to end against a real gateway's TLS listener (handshakes, http/1.1 keep-alive, h2 by ALPN), with
 * no failed request. The figures themselves are the bench's business, not this test's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { parseH2load } from '../../bench/proxy-tls.ts';
import { runBench as runScript, type BenchRun } from '../helpers/bench.ts';

const hasH2load = !spawnSync('h2load', ['--version']).error;

function runBench(args: string[], timeoutMs: number): Promise<BenchRun> {
  return runScript('proxy-tls.ts', args, timeoutMs);
}

test('bench --short: handshakes, https keep-alive and h2 through berth, none failing', async () => {
  // --no-wrk: the tools CI has (wrk is not in it), the same everywhere.
  const run = await runBench(['--short', '--json', '--no-nginx', '--no-wrk', '--duration', '1'], 90_000);
  assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}`);
  const out = JSON.parse(run.stdout);
  assert.deepEqual(out.skipped.nginx, '--no-nginx');
  assert.equal(out.skipped.berth, undefined, run.stderr);
  assert.equal(out.negotiated.berth.alpn, 'h2');
  assert.equal(out.negotiated.berth.protocol, 'TLSv1.3');
  const names = out.results.map((r: { measure: string }) => r.measure);
  assert.deepEqual(names, hasH2load ? ['handshakes', 'h1', 'h2'] : ['handshakes']);
  assert.match(out.results[0].tool, /^node tls\.connect/);
  for (const r of out.results) {
    assert.ok(r.berth.perSec > 0, `${r.measure}: ${JSON.stringify(r.berth)}`);
    assert.equal(r.berth.errors, 0, `${r.measure}: ${JSON.stringify(r.berth)}`);
    assert.equal(r.nginx, undefined);
  }
});

test('bench: bad usage exits 2 and says why', async () => {
  for (const args of [['--streams', '0'], ['--duration', 'soon'], ['--bogus']]) {
    const run = await runBench(args, 10_000);
    assert.equal(run.code, 2, args.join(' '));
    assert.match(run.stderr, /usage: npx node bench\/proxy-tls\.ts/);
    assert.equal(run.stdout, '');
  }
});

test("h2load's report is read: rate, failures and non-2xx answers, mean latency, protocol", () => {
  const out = `starting benchmark...
Application protocol: h2
finished in 2.00s, 12317.50 req/s, 1.02MB/s
requests: 24635 total, 24635 started, 24635 done, 24630 succeeded, 5 failed, 1 errored, 2 timeout
status codes: 24630 2xx, 0 3xx, 3 4xx, 4 5xx
traffic: 2.04MB (2140017) total, 407.04KB (416813) headers (space savings 91.24%), 875.71KB (896735) data
                     min         max         mean         sd        +/- sd
time for request:      134us     31.36ms      1.27ms       977us    91.38%
`;
  assert.deepEqual(parseH2load(out), { perSec: 12317.5, p50Ms: null, p99Ms: null, meanMs: 1.27, errors: 15, protocol: 'h2' });
  assert.throws(() => parseH2load('no protocol is negotiated'), /could not read h2load's output/);
});
