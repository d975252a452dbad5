/**
 * How berth scales with the size of its routing table and with idle load, in one run:
 *   hosts        small keep-alive GETs (wrk) through a gateway whose app has 1 host, and through one whose
 *                app has 10,000 exact hosts (requests name the last one), in alternating rounds, each in
 *                front of its own instance of bench/upstream.mjs; the ratio of their req/s (goal >= 0.95).
 *   rss idle     the gateway's resident memory (VmRSS of its process, threads included) once it serves one
 *                app and has had no traffic (goal <= 60 MB).
 *   rss 200      the same with 200 apps of 1 instance each (a tiny Python server each), all ready (goal
 *                <= 150 MB). The apps' own memory is not counted.
 *   rss conns    the 1-app gateway while 10,000 client connections are open and idle after one keep-alive
 *                request each, and how many of them were still open when it was read.
 *
 * Usage: npx node bench/scale.ts [--duration 5] [--rounds 3] [--hosts 10000] [--apps 200] [--connections 10000]
 *          [--workers N|auto] [--only hosts|rss] [--json]
 * --workers: every gateway's `proxy.workers` (default 1); the RSS figures then include the worker threads.
 */
import { connect, type Socket } from 'node:net';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { benchAppUser } from './app-user.ts';
import { ROOT, benchMain, cleanEnv, freePort, getStatus, note, onPath, runTool, spawnChild, stopChild, table, waitUntil, type Child } from './harness.ts';
import { UsageError, positiveInt } from './options.ts';
import { BERTH_READY_TIMEOUT_MS, UPSTREAM, parseWrk } from './proxy-targets.ts';

const MAIN = join(ROOT, 'src/main.ts');
const GOAL = { hostsRatio: 0.95, rssIdleMb: 60, rssAppsMb: 150 };
const USAGE = 'usage: npx node bench/scale.ts [--duration SECONDS] [--rounds N] [--hosts N] [--apps N] [--connections N] [--workers N|auto] [--only hosts|rss] [--json]';
/** Starting 200 apps (a release each, a process each, a health check each) takes a while on 2 cores. */
const MANY_APPS_READY_TIMEOUT_MS = 300_000;
/** The tiny app of the 200-app gateway: answers 200 to anything on 127.0.0.1:$PORT. */
const TINY_APP = `import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "3"); self.end_headers(); self.wfile.write(b"ok\\n")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
`;

interface Options {
  durationS: number;
  rounds: number;
  hosts: number;
  apps: number;
  connections: number;
  workers: number | 'auto';
  only: 'hosts' | 'rss' | null;
  json: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '5' },
      rounds: { type: 'string', default: '3' },
      hosts: { type: 'string', default: '10000' },
      apps: { type: 'string', default: '200' },
      connections: { type: 'string', default: '10000' },
      workers: { type: 'string', default: '1' },
      only: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.only !== undefined && values.only !== 'hosts' && values.only !== 'rss') throw new UsageError(`--only must be hosts or rss, got "${values.only}"`);
  if (values.only !== 'rss' && !onPath('wrk')) throw new UsageError('the hosts measure needs wrk on PATH (apt-get install wrk), or use --only rss');
  return {
    durationS: positiveInt(values.duration, '--duration', 600),
    rounds: positiveInt(values.rounds, '--rounds', 20),
    hosts: positiveInt(values.hosts, '--hosts', 100_000),
    apps: positiveInt(values.apps, '--apps', 1000),
    connections: positiveInt(values.connections, '--connections', 60_000),
    workers: values.workers === 'auto' ? 'auto' : positiveInt(values.workers, '--workers', 32),
    only: (values.only as Options['only']) ?? null,
    json: values.json,
  };
}

// ---- gateways ------------------------------------------------------------------------------------

interface Gateway {
  child: Child;
  port: number;
}

/** A gateway from `apps` (name -> app config) in `dir`, ready once GET /_berth/ready answers 200. */
async function startGateway(dir: string, apps: Record<string, unknown>, workers: number | 'auto', readyTimeoutMs = BERTH_READY_TIMEOUT_MS): Promise<Gateway> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const config = { state_dir: join(dir, 'state'), listen: [`127.0.0.1:${port}`], log_levels: { root: 'warn' }, ...(workers === 1 ? {} : { proxy: { workers } }), apps };
  const file = join(dir, 'berth.yaml');
  await writeFile(file, YAML.stringify(config));
  const child = spawnChild('berth', process.execPath, [MAIN, 'start', '--config', file], { env: cleanEnv(), log: join(dir, 'berth.log'), stopSignal: 'SIGTERM' });
  await waitUntil('GET /_berth/ready to answer 200', readyTimeoutMs, async () => (await getStatus(port, '/_berth/ready')) === 200, child);
  return { child, port };
}

/** The bench upstream as an app, with `hosts`. */
async function upstreamApp(dir: string, hosts: string[]): Promise<Record<string, unknown>> {
  const source = join(dir, 'app');
  await mkdir(source, { recursive: true });
  await writeFile(join(source, 'README'), 'The scale bench app: its command runs bench/upstream.mjs from the repository.\n');
  return {
    bench: {
      ...benchAppUser,
      source,
      hosts,
      processes: { web: { command: `"${process.execPath}" "${UPSTREAM}"`, instances: 1, concurrency: 64 } },
      routes: [{ path: '/', to: 'web' }],
      health: { path: '/up' },
      queue: { max: 128, timeout: '10s' },
      db_connections: 64,
    },
  };
}

/** Resident memory of one process (all its threads), in MB. */
async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  return Math.round((kb / 1024) * 10) / 10;
}

// ---- hosts ---------------------------------------------------------------------------------------

interface HostsResult {
  oneHost: number[];
  manyHosts: number[];
  /** Median over rounds of (many / one), each round measured back to back. */
  ratio: number;
  startSeconds: { oneHost: number; manyHosts: number };
}

async function wrkWithHost(port: number, host: string, durationS: number): Promise<number> {
  const args = ['-t', '1', '-c', '32', '-d', `${durationS}s`, '--latency', '-H', `Host: ${host}`, `http://127.0.0.1:${port}/`];
  const figures = parseWrk(await runTool('wrk', args, durationS * 1000 + 20_000));
  if (figures.errors > 0) throw new Error(`wrk against ${host}: ${figures.errors} errors (a host that does not route?)`);
  return figures.requestsPerSec;
}

async function measureHosts(opts: Options, dir: string): Promise<HostsResult> {
  const hosts = Array.from({ length: opts.hosts }, (_, i) => `h${i}.scale.test`);
  note('starting a gateway with 1 host');
  let t0 = performance.now();
  const one = await startGateway(join(dir, 'one'), await upstreamApp(join(dir, 'one'), [hosts[hosts.length - 1]]), opts.workers);
  const oneStart = (performance.now() - t0) / 1000;
  note(`starting a gateway with ${opts.hosts} hosts`);
  t0 = performance.now();
  const many = await startGateway(join(dir, 'many'), await upstreamApp(join(dir, 'many'), hosts), opts.workers);
  const manyStart = (performance.now() - t0) / 1000;
  const last = hosts[hosts.length - 1];
  const oneHost: number[] = [];
  const manyHosts: number[] = [];
  const ratios: number[] = [];
  try {
    await wrkWithHost(one.port, last, 1);
    await wrkWithHost(many.port, last, 1);
    for (let round = 1; round <= opts.rounds; round++) {
      note(`round ${round}: 1 host, then ${opts.hosts} hosts, ${opts.durationS}s each`);
      const a = await wrkWithHost(one.port, last, opts.durationS);
      const b = await wrkWithHost(many.port, last, opts.durationS);
      oneHost.push(Math.round(a));
      manyHosts.push(Math.round(b));
      ratios.push(b / a);
    }
  } finally {
    await stopChild(one.child);
    await stopChild(many.child);
  }
  ratios.sort((p, q) => p - q);
  return { oneHost, manyHosts, ratio: ratios[Math.floor(ratios.length / 2)], startSeconds: { oneHost: Math.round(oneStart * 10) / 10, manyHosts: Math.round(manyStart * 10) / 10 } };
}

// ---- memory --------------------------------------------------------------------------------------

interface RssResult {
  idleMb: number;
  appsMb: number;
  apps: number;
  appsStartSeconds: number;
  connections: { asked: number; open: number; mb: number };
}

/** Opens `n` connections, each sending one keep-alive GET; resolves once every one has its answer or failed. */
async function openIdle(port: number, n: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  const BATCH = 500;
  for (let i = 0; i < n; i += BATCH) {
    const batch = Array.from({ length: Math.min(BATCH, n - i) }, () => new Promise<Socket | null>((resolveOne) => {
      const s = connect(port, '127.0.0.1');
      let answered = false;
      s.on('error', () => resolveOne(null));
      s.on('connect', () => s.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'));
      s.on('data', () => {
        if (!answered) {
          answered = true;
          resolveOne(s);
        }
      });
      s.setTimeout(10_000, () => {
        s.destroy();
        resolveOne(null);
      });
    }));
    for (const s of await Promise.all(batch)) if (s !== null) sockets.push(s);
  }
  return sockets;
}

async function measureRss(opts: Options, dir: string): Promise<RssResult> {
  note('starting a gateway with 1 app and reading its memory after 3s idle');
  const one = await startGateway(join(dir, 'rss-one'), await upstreamApp(join(dir, 'rss-one'), []), opts.workers);
  let idleMb: number;
  let connections: RssResult['connections'];
  try {
    await new Promise((r) => setTimeout(r, 3_000));
    idleMb = await rssMb(one.child.proc.pid!);
    note(`opening ${opts.connections} keep-alive connections, one request each`);
    const sockets = await openIdle(one.port, opts.connections);
    const open = sockets.filter((s) => !s.destroyed).length;
    const mb = await rssMb(one.child.proc.pid!);
    connections = { asked: opts.connections, open, mb };
    for (const s of sockets) s.destroy();
  } finally {
    await stopChild(one.child);
  }

  note(`starting a gateway with ${opts.apps} apps of 1 instance each`);
  const apps: Record<string, unknown> = {};
  const source = join(dir, 'tiny-app');
  await mkdir(source, { recursive: true });
  await writeFile(join(source, 'server.py'), TINY_APP);
  for (let i = 0; i < opts.apps; i++) {
    apps[`app${i}`] = {
      ...benchAppUser,
      source,
      hosts: [`app${i}.scale.test`],
      processes: { web: { command: 'python3 server.py', instances: 1, concurrency: 4 } },
      health: { path: '/', interval: '5s' },
    };
  }
  const t0 = performance.now();
  const many = await startGateway(join(dir, 'rss-many'), apps, opts.workers, MANY_APPS_READY_TIMEOUT_MS);
  const appsStartSeconds = Math.round((performance.now() - t0) / 100) / 10;
  let appsMb: number;
  try {
    await new Promise((r) => setTimeout(r, 3_000));
    appsMb = await rssMb(many.child.proc.pid!);
  } finally {
    await stopChild(many.child);
  }
  return { idleMb, appsMb, apps: opts.apps, appsStartSeconds, connections };
}

// ---- report ----------------------------------------------------------------------------------------

function report(opts: Options, hosts: HostsResult | null, rss: RssResult | null): string {
  const lines = [`scale: node ${process.version}, proxy.workers ${opts.workers}`];
  const rows = [['figure', 'value', 'goal', '']];
  const met = (ok: boolean) => (ok ? 'met' : 'not met');
  if (hosts) {
    rows.push([`req/s, 1 host (rounds)`, hosts.oneHost.join(' / '), '', '']);
    rows.push([`req/s, ${opts.hosts} hosts (rounds)`, hosts.manyHosts.join(' / '), '', '']);
    rows.push([`${opts.hosts} hosts / 1 host`, `${hosts.ratio.toFixed(3)}`, `>= ${GOAL.hostsRatio}`, met(hosts.ratio >= GOAL.hostsRatio)]);
    rows.push([`start-up to ready, 1 / ${opts.hosts} hosts`, `${hosts.startSeconds.oneHost}s / ${hosts.startSeconds.manyHosts}s`, '', '']);
  }
  if (rss) {
    rows.push(['gateway RSS, idle with 1 app', `${rss.idleMb} MB`, `<= ${GOAL.rssIdleMb} MB`, met(rss.idleMb <= GOAL.rssIdleMb)]);
    rows.push([`gateway RSS, ${rss.apps} apps of 1 instance`, `${rss.appsMb} MB`, `<= ${GOAL.rssAppsMb} MB`, met(rss.appsMb <= GOAL.rssAppsMb)]);
    rows.push([`start-up to ready, ${rss.apps} apps`, `${rss.appsStartSeconds}s`, '', '']);
    rows.push([`gateway RSS, ${rss.connections.open} of ${rss.connections.asked} idle keep-alive connections open`, `${rss.connections.mb} MB`, '', '']);
  }
  lines.push('', ...table(rows));
  return lines.join('\n');
}

async function run(opts: Options, dir: string): Promise<void> {
  const hosts = opts.only === 'rss' ? null : await measureHosts(opts, dir);
  const rss = opts.only === 'hosts' ? null : await measureRss(opts, dir);
  if (opts.json) process.stdout.write(JSON.stringify({ node: process.version, goal: GOAL, hosts, rss }, null, 2) + '\n');
  else process.stdout.write(report(opts, hosts, rss) + '\n');
}

const budgetMs = (opts: Options): number => 3 * BERTH_READY_TIMEOUT_MS + MANY_APPS_READY_TIMEOUT_MS + opts.rounds * 2 * (opts.durationS * 1000 + 20_000) + 120_000;

process.exit(await benchMain(USAGE, parseOptions, budgetMs, run));
