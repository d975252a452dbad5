/**
 * HTTPS at the front door, berth against nginx (1 worker), both serving the SAME certificate (EC P-256,
 * made by openssl for this run) in front of the SAME upstream process (bench/upstream.mjs), measured:
 *   handshakes  new TLS connections per second, one request each, no keep-alive and no session
 *               resumption: wrk with `Connection: close` (each reconnect is a full handshake), else
 *               an in-process Node client doing the same
 *   h1          HTTPS keep-alive requests per second over HTTP/1.1: wrk, else `h2load --h1`
 *   h2          the same over h2 (ALPN), several streams per connection: h2load (nghttp2-client)
 * Each figure is berth's next to nginx's, with berth's ratio (with --rounds, the median of the rounds'
 * ratios, each pair measured back to back, which holds better than the rates when the machine is shared)
 * and the CPU time each proxy spent per request (/proc: berth's gateway process, nginx's master and
 * worker; never the upstream). The goal for each is >= 0.8x nginx. --node-floor adds Node answering by
 * itself on the same kind of listener (bench/tls-floor.mjs): the most a Node proxy could reach here.
 * --cpu-prof DIR has berth write a V8 CPU profile there when it stops (with --only: of one load).
 *
 * Usage: npx node bench/proxy-tls.ts [--duration 10] [--connections 32] [--handshake-connections 16]
 *        [--streams 4] [--rounds 1] [--short] [--no-nginx] [--no-wrk] [--only handshakes|h1|h2]
 *        [--node-floor] [--workers N|auto] [--cpu-prof DIR] [--json]
 * --workers: berth's proxy.workers and nginx's worker_processes alike (default 1).
 *
 * Everything listens on 127.0.0.1, every run has a deadline, and children are stopped on exit or Ctrl-C.
 */
import { connect } from 'node:tls';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createCa, issueCertificate } from '../test/helpers/certificates.ts';
import { ROOT, benchMain, cleanEnv, cpuMs, isStopping, note, onPath, runTool, spawnChild, table } from './harness.ts';
import { UsageError, positiveInt } from './options.ts';
import { percentile } from './percentile.ts';
import { BERTH_READY_TIMEOUT_MS, START_TIMEOUT_MS, parseWrk, readPortFile, startTargets, type BenchCertificate } from './proxy-targets.ts';

const FLOOR = join(ROOT, 'bench/tls-floor.mjs');

const USAGE =
  'usage: npx node bench/proxy-tls.ts [--duration SECONDS] [--connections N] [--handshake-connections N] [--streams N] [--rounds N] [--short] [--no-nginx] [--no-wrk] [--only handshakes|h1|h2] [--node-floor] [--workers N|auto] [--cpu-prof DIR] [--json]';
/** Per run, on top of warmup + duration: tool start-up and reporting. */
const RUN_SLACK_MS = 20_000;
/** The goal of issue 12 for each figure. */
const GOAL = 0.8;

interface Options {
  durationS: number;
  warmupS: number;
  connections: number;
  handshakeConnections: number;
  streams: number;
  rounds: number;
  nginx: boolean;
  /** wrk is on PATH and not turned off: else the Node handshake client and `h2load --h1` stand in. */
  wrk: boolean;
  /** Measure this figure alone (with --cpu-prof: a profile of that one load). */
  only: MeasureName | null;
  /** Also measure bench/tls-floor.mjs: Node's TLS answering by itself, the most berth could reach. */
  nodeFloor: boolean;
  /** berth's `proxy.workers` and nginx's `worker_processes`, the same for both. */
  workers: number | 'auto';
  /** A directory where berth writes a V8 CPU profile (node --cpu-prof) when it stops. */
  cpuProf: string | null;
  json: boolean;
}

const MEASURES = ['handshakes', 'h1', 'h2'] as const;
type MeasureName = (typeof MEASURES)[number];
/** `node`: bench/tls-floor.mjs, Node answering by itself (--node-floor): what Node's TLS allows at best. */
type TargetName = 'berth' | 'nginx' | 'node';

interface Figures {
  /** Requests per second; for `handshakes` each request is one new connection, so also handshakes/s. */
  perSec: number;
  p50Ms: number | null;
  p99Ms: number | null;
  /** h2load gives a mean, not percentiles. */
  meanMs: number | null;
  /** Non-2xx answers plus failed connections, resets and timeouts. */
  errors: number;
  /**
   * CPU time (user + system) the proxy's processes spent per request, in microseconds: berth's gateway
   * process, nginx's master and worker; never the upstream's. Less sensitive than the rate to what else
   * the machine runs. Null when /proc cannot tell.
   */
  cpuUsPerRequest?: number | null;
}

interface Measure {
  name: MeasureName;
  title: string;
  tool: string;
  run: (port: number, durationS: number) => Promise<Figures>;
}

/** What a handshake negotiates with a target: checked so "the same certificate" is a fact, not a hope. */
interface Negotiated {
  protocol: string | null;
  cipher: string;
  alpn: string | null;
  fingerprint256: string;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string' },
      connections: { type: 'string' },
      'handshake-connections': { type: 'string' },
      streams: { type: 'string' },
      rounds: { type: 'string', default: '1' },
      short: { type: 'boolean', default: false },
      'no-nginx': { type: 'boolean', default: false },
      'no-wrk': { type: 'boolean', default: false },
      only: { type: 'string' },
      'node-floor': { type: 'boolean', default: false },
      workers: { type: 'string', default: '1' },
      'cpu-prof': { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  // --short: the CI check that every path works (a few seconds per figure), not a measurement.
  const short = values.short;
  const only = values.only;
  if (only !== undefined && !MEASURES.includes(only as MeasureName)) throw new UsageError(`--only must be one of ${MEASURES.join(', ')}, got "${only}"`);
  return {
    durationS: positiveInt(values.duration ?? (short ? '2' : '10'), '--duration', 600),
    warmupS: short ? 1 : 2,
    connections: positiveInt(values.connections ?? (short ? '8' : '32'), '--connections', 1024),
    handshakeConnections: positiveInt(values['handshake-connections'] ?? (short ? '4' : '16'), '--handshake-connections', 1024),
    streams: positiveInt(values.streams ?? (short ? '2' : '4'), '--streams', 128),
    rounds: positiveInt(values.rounds, '--rounds', 10),
    nginx: !values['no-nginx'],
    wrk: !values['no-wrk'] && onPath('wrk') !== null,
    only: (only ?? null) as MeasureName | null,
    nodeFloor: values['node-floor'],
    workers: values.workers === 'auto' ? 'auto' : positiveInt(values.workers, '--workers', 32),
    cpuProf: values['cpu-prof'] === undefined ? null : resolve(values['cpu-prof']),
    json: values.json,
  };
}

// ---- load tools ----------------------------------------------------------------------------------

function url(port: number): string {
  return `https://127.0.0.1:${port}/`;
}

async function wrk(port: number, durationS: number, connections: number, extra: string[]): Promise<Figures> {
  const args = ['-t', '1', '-c', String(connections), '-d', `${durationS}s`, '--timeout', '5s', '--latency', ...extra, url(port)];
  const f = parseWrk(await runTool('wrk', args, durationS * 1000 + RUN_SLACK_MS));
  return { perSec: f.requestsPerSec, p50Ms: f.p50Ms, p99Ms: f.p99Ms, meanMs: null, errors: f.errors };
}

/** "123us", "4.56ms", "1.2s" (h2load) -> milliseconds. */
function h2loadDuration(text: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text);
  if (!m) throw new Error(`unexpected h2load duration "${text}"`);
  return Number(m[1]) * { us: 0.001, ms: 1, s: 1_000 }[m[2] as 'us' | 'ms' | 's'];
}

export function parseH2load(out: string): Figures & { protocol: string | null } {
  const rps = /finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(out);
  const requests = /requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(out);
  const codes = /status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out);
  const time = /time for request:\s+\S+\s+\S+\s+(\S+)/.exec(out);
  if (!rps || !requests || !codes) throw new Error(`could not read h2load's output:\n${out}`);
  const errors = [...requests.slice(1), ...codes.slice(1)].reduce((sum, n) => sum + Number(n), 0);
  const protocol = /Application protocol: (\S+)/.exec(out)?.[1] ?? null;
  return { perSec: Number(rps[1]), p50Ms: null, p99Ms: null, meanMs: time ? h2loadDuration(time[1]) : null, errors, protocol };
}

async function h2load(port: number, durationS: number, connections: number, streams: number, h1: boolean): Promise<Figures> {
  const args = ['-t', '1', '-c', String(connections), '-m', String(streams), '-D', String(durationS), ...(h1 ? ['--h1'] : []), url(port)];
  const f = parseH2load(await runTool('h2load', args, durationS * 1000 + RUN_SLACK_MS));
  const want = h1 ? 'http/1.1' : 'h2';
  if (f.protocol !== want) throw new Error(`h2load negotiated ${f.protocol ?? 'nothing'} with 127.0.0.1:${port}, not ${want}`);
  return { perSec: f.perSec, p50Ms: f.p50Ms, p99Ms: f.p99Ms, meanMs: f.meanMs, errors: f.errors };
}

/**
 * New TLS connections in a loop, `connections` at a time, each sending one request with
 * `Connection: close` and reading the answer to its end. No session is passed, so every handshake is full.
 */
async function nodeHandshakes(port: number, durationS: number, connections: number): Promise<Figures> {
  const request = Buffer.from(`GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
  const deadline = Date.now() + durationS * 1000;
  const times: number[] = [];
  let errors = 0;
  const one = (): Promise<void> =>
    new Promise((resolveOne) => {
      const start = performance.now();
      let head = '';
      const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => socket.write(request));
      socket.setTimeout(5_000, () => socket.destroy(new Error('timeout')));
      socket.on('data', (chunk: Buffer) => {
        if (head.length < 16) head += chunk.toString('latin1');
      });
      socket.on('error', () => {});
      socket.on('close', (hadError) => {
        if (!hadError && head.startsWith('HTTP/1.1 200')) times.push(performance.now() - start);
        else errors++;
        resolveOne();
      });
    });
  const started = Date.now();
  const loop = async (): Promise<void> => {
    while (Date.now() < deadline && !isStopping()) await one();
  };
  await Promise.all(Array.from({ length: connections }, loop));
  times.sort((a, b) => a - b);
  return { perSec: times.length / ((Date.now() - started) / 1000), p50Ms: percentile(times, 50), p99Ms: percentile(times, 99), meanMs: null, errors };
}

function measures(opts: Options, skipped: Record<string, string>): Measure[] {
  const hasH2load = onPath('h2load') !== null;
  const noH2load = 'h2load is not on PATH (Debian: nghttp2-client)';
  const title = { handshakes: 'handshakes/s (new connection, 1 request)', h1: 'HTTPS http/1.1 keep-alive req/s', h2: 'HTTPS h2 req/s' };
  const list: Measure[] = [];
  if (opts.wrk) {
    list.push({ name: 'handshakes', title: title.handshakes, tool: `wrk -c${opts.handshakeConnections} -H 'Connection: close'`, run: (port, d) => wrk(port, d, opts.handshakeConnections, ['-H', 'Connection: close']) });
    list.push({ name: 'h1', title: title.h1, tool: `wrk -c${opts.connections}`, run: (port, d) => wrk(port, d, opts.connections, []) });
  } else {
    list.push({ name: 'handshakes', title: title.handshakes, tool: `node tls.connect x${opts.handshakeConnections} (no wrk)`, run: (port, d) => nodeHandshakes(port, d, opts.handshakeConnections) });
    if (hasH2load) list.push({ name: 'h1', title: title.h1, tool: `h2load --h1 -c${opts.connections} (no wrk)`, run: (port, d) => h2load(port, d, opts.connections, 1, true) });
    else skipped.h1 = `no wrk, and ${noH2load}`;
  }
  if (hasH2load) list.push({ name: 'h2', title: title.h2, tool: `h2load -c${opts.connections} -m${opts.streams}`, run: (port, d) => h2load(port, d, opts.connections, opts.streams, false) });
  else skipped.h2 = noH2load;
  return opts.only === null ? list : list.filter((m) => m.name === opts.only);
}

/** One handshake with a target: protocol, cipher, ALPN and the certificate it served. */
function negotiate(port: number): Promise<Negotiated> {
  return new Promise((resolveProbe, reject) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2', 'http/1.1'] }, () => {
      const result = { protocol: socket.getProtocol(), cipher: socket.getCipher().standardName, alpn: socket.alpnProtocol || null, fingerprint256: socket.getPeerCertificate().fingerprint256 };
      socket.destroy();
      resolveProbe(result);
    });
    socket.setTimeout(5_000, () => socket.destroy(new Error('handshake timeout')));
    socket.on('error', reject);
  });
}

// ---- report ----------------------------------------------------------------------------------------

interface Row {
  measure: MeasureName;
  title: string;
  tool: string;
  /** The median round by rate, per target; absent when the target was skipped. */
  berth?: Figures;
  nginx?: Figures;
  node?: Figures;
  /** berth / node (bare Node, no proxying), the same way; null without both. */
  nodeRatio: number | null;
  /** berth / nginx: the median of each round's ratio (the two ran back to back); null without both. */
  ratio: number | null;
  /** berth's CPU per request / nginx's, the same way; null without both. */
  cpuRatio: number | null;
  /** Every round's rate, for the spread. */
  rounds: Partial<Record<TargetName, number[]>>;
}

function median(runs: Figures[]): Figures | undefined {
  if (runs.length === 0) return undefined;
  return [...runs].sort((a, b) => a.perSec - b.perSec)[Math.floor((runs.length - 1) / 2)];
}

/** The median of the rounds' `berth / nginx` for one figure; null without both or with a zero. */
function pairedRatio(berth: Figures[], nginx: Figures[], value: (f: Figures) => number | null | undefined): number | null {
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(berth.length, nginx.length); i++) {
    const b = value(berth[i]);
    const n = value(nginx[i]);
    if (b != null && n != null && n > 0) ratios.push(b / n);
  }
  if (ratios.length === 0) return null;
  ratios.sort((a, b) => a - b);
  const mid = Math.floor(ratios.length / 2);
  return ratios.length % 2 === 1 ? ratios[mid] : (ratios[mid - 1] + ratios[mid]) / 2;
}

function cpu(f: Figures | undefined): string {
  return f?.cpuUsPerRequest == null ? '-' : `${f.cpuUsPerRequest.toFixed(0)}us`;
}

function latency(f: Figures | undefined): string {
  if (!f) return '-';
  const fmt = (v: number) => (v < 1 ? `${(v * 1000).toFixed(0)}us` : `${v.toFixed(2)}ms`);
  if (f.meanMs !== null) return `mean ${fmt(f.meanMs)}`;
  return f.p50Ms === null ? '-' : `${fmt(f.p50Ms)} / ${fmt(f.p99Ms ?? 0)}`;
}

function report(opts: Options, rows: Row[], negotiated: Partial<Record<TargetName, Negotiated>>, skipped: Record<string, string>): string {
  const floor = rows.some((r) => r.node);
  const cells = [['measure', 'berth', 'nginx', 'berth/nginx', 'CPU/req b/n', 'errors b/n', 'berth p50/p99', 'nginx p50/p99', ...(floor ? ['bare node', 'berth/node'] : []), 'tool']];
  for (const r of rows) {
    cells.push([
      r.title,
      r.berth ? r.berth.perSec.toFixed(0) : '-',
      r.nginx ? r.nginx.perSec.toFixed(0) : '-',
      r.ratio === null ? '-' : `${r.ratio.toFixed(2)}x`,
      `${cpu(r.berth)} / ${cpu(r.nginx)}${r.cpuRatio === null ? '' : ` (${r.cpuRatio.toFixed(2)}x)`}`,
      `${r.berth?.errors ?? '-'} / ${r.nginx?.errors ?? '-'}`,
      latency(r.berth),
      latency(r.nginx),
      ...(floor ? [r.node ? r.node.perSec.toFixed(0) : '-', r.nodeRatio === null ? '-' : `${r.nodeRatio.toFixed(2)}x`] : []),
      r.tool,
    ]);
  }
  const tls = (Object.entries(negotiated) as [TargetName, Negotiated][]).map(([name, n]) => `${name} ${n.protocol} ${n.cipher} ALPN ${n.alpn || 'none'}`);
  const same = negotiated.berth && negotiated.nginx ? (negotiated.berth.fingerprint256 === negotiated.nginx.fingerprint256 ? 'same certificate' : 'DIFFERENT certificates') : '';
  const header = [
    `HTTPS, EC P-256 certificate, ${opts.durationS}s per figure${opts.rounds > 1 ? `, median of ${opts.rounds} rounds` : ''}, ${opts.workers} worker(s) each, node ${process.version}, ${availableParallelism()} cpus`,
    `negotiated: ${tls.join('; ')}${same ? ` (${same})` : ''}`,
  ];
  const summary = rows
    .filter((r) => r.ratio !== null)
    .map((r) => `berth / nginx ${r.measure.padEnd(10)}: ${r.ratio!.toFixed(2)}x (goal ${GOAL.toFixed(2)}x: ${r.ratio! >= GOAL ? 'met' : 'not met'})${r.cpuRatio === null ? '' : `; CPU per request ${r.cpuRatio.toFixed(2)}x nginx's`}`);
  if (rows.some((r) => r.ratio !== null)) summary.push('(ratios: the median of the rounds, berth and nginx measured back to back in each; CPU: the proxy processes only, not the upstream)');
  for (const [name, why] of Object.entries(skipped)) summary.push(`${name}: skipped, ${why}`);
  return [...header, '', ...table(cells), '', ...summary].join('\n');
}

// ---- main ---------------------------------------------------------------------------------------------

async function run(opts: Options, dir: string): Promise<void> {
  note('making a CA and a certificate with openssl');
  const ca = await createCa(join(dir, 'certs'), 'berth bench CA');
  const leaf = await issueCertificate(ca, ['localhost', 'bench.localhost']);
  const certificate: BenchCertificate = { certificate: leaf.certificate, key: leaf.key };

  // The apps berth runs get a clean environment, so the profile is of the gateway alone.
  const berthEnv: Record<string, string> = opts.cpuProf === null ? {} : { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${opts.cpuProf}` };
  const started = await startTargets(dir, { nginx: opts.nginx, tls: certificate, berthEnv, workers: opts.workers });
  const skipped = started.skipped;
  const targets: { name: TargetName; port: number; pids: () => number[] }[] = [];
  if (started.berth?.tlsPort) targets.push({ name: 'berth', port: started.berth.tlsPort, pids: started.berth.proxyPids });
  if (started.nginx?.tlsPort) targets.push({ name: 'nginx', port: started.nginx.tlsPort, pids: started.nginx.proxyPids });
  if (opts.nodeFloor) {
    const portFile = join(dir, 'floor.port');
    const floor = spawnChild('bare node', process.execPath, [FLOOR, certificate.certificate, certificate.key, portFile], { env: cleanEnv(), log: join(dir, 'floor.log'), stopSignal: 'SIGTERM' });
    targets.push({ name: 'node', port: await readPortFile(portFile, floor), pids: () => [floor.proc.pid!] });
  }
  if (targets.length === 0) throw new Error(`nothing to measure: ${Object.entries(skipped).map(([name, why]) => `${name} ${why}`).join('; ')}`);
  const negotiated: Partial<Record<TargetName, Negotiated>> = {};
  for (const t of targets) negotiated[t.name] = await negotiate(t.port);

  const list = measures(opts, skipped);
  const runs = new Map<string, Figures[]>();
  for (let round = 1; round <= opts.rounds; round++) {
    for (const m of list) {
      for (const t of targets) {
        note(`${opts.rounds > 1 ? `round ${round}: ` : ''}${m.name} on ${t.name} (127.0.0.1:${t.port}): warming up ${opts.warmupS}s, then measuring ${opts.durationS}s`);
        await m.run(t.port, opts.warmupS);
        const key = `${m.name}/${t.name}`;
        const pids = t.pids();
        const cpuBefore = cpuMs(pids);
        const f = await m.run(t.port, opts.durationS);
        const used = cpuMs(pids) - cpuBefore;
        f.cpuUsPerRequest = f.perSec > 0 && used > 0 ? (used * 1000) / (f.perSec * opts.durationS) : null;
        runs.set(key, [...(runs.get(key) ?? []), f]);
      }
    }
  }
  const rows: Row[] = list.map((m) => {
    const b = runs.get(`${m.name}/berth`) ?? [];
    const n = runs.get(`${m.name}/nginx`) ?? [];
    const bare = runs.get(`${m.name}/node`) ?? [];
    const rounds = { berth: b.map((f) => Math.round(f.perSec)), nginx: n.map((f) => Math.round(f.perSec)), ...(opts.nodeFloor ? { node: bare.map((f) => Math.round(f.perSec)) } : {}) };
    const ratio = pairedRatio(b, n, (f) => f.perSec);
    const cpuRatio = pairedRatio(b, n, (f) => f.cpuUsPerRequest);
    const nodeRatio = pairedRatio(b, bare, (f) => f.perSec);
    return { measure: m.name, title: m.title, tool: m.tool, berth: median(b), nginx: median(n), node: median(bare), ratio, cpuRatio, nodeRatio, rounds };
  });
  if (opts.json) {
    const out = { ...opts, node: process.version, cpus: availableParallelism(), goal: GOAL, negotiated, results: rows, skipped };
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else {
    process.stdout.write(report(opts, rows, negotiated, skipped) + '\n');
  }
}

/** Start-up, then every run of every round with its warmup and slack, and the stops. */
const budgetMs = (opts: Options): number =>
  BERTH_READY_TIMEOUT_MS + 3 * START_TIMEOUT_MS + opts.rounds * 3 * 3 * ((opts.durationS + opts.warmupS) * 1000 + 2 * RUN_SLACK_MS) + 30_000;

if (import.meta.main) process.exit(await benchMain(USAGE, parseOptions, budgetMs, run));
