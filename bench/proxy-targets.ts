/**
 * The proxies the proxy benches measure, all in front of ONE upstream process (bench/upstream.mjs):
 * berth supervising it as its only app, and nginx (1 worker, or one per core), HAProxy and Caddy (when
 * installed) proxying to that same process. With `tls`, berth and nginx also get a TLS listener serving
 * the one certificate given, so both handshake with the same key. Also wrk's output format, which the
 * benches read.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { benchAppUser } from './app-user.ts';
import { ROOT, cleanEnv, freePort, getStatus, note, spawnChild, stopStarted, waitUntil, withChildren, type Child } from './harness.ts';

export const UPSTREAM = join(ROOT, 'bench/upstream.mjs');
const MAIN = join(ROOT, 'src/main.ts');
export const NGINX_CANDIDATES = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx'];
/** The first start deploys the bench app (copy, spawn, health check) before /_berth/ready turns 200. */
export const BERTH_READY_TIMEOUT_MS = 60_000;
export const START_TIMEOUT_MS = 15_000;

/** A certificate both proxies serve on their TLS listener: PEM files. */
export interface BenchCertificate {
  certificate: string;
  key: string;
}

export interface ProxyTarget {
  child: Child;
  port: number;
  /** The TLS listener's port; null without `tls`. */
  tlsPort: number | null;
  /** The processes doing the proxying, whose CPU time is the proxy's cost (not the upstream's). */
  proxyPids: () => number[];
}

/** GET / over TLS (any certificate: the bench trusts what it made) answers 200. */
function getTlsStatus(port: number, path: string): Promise<number> {
  return new Promise((resolveStatus) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: 2_000, rejectUnauthorized: false }, (res) => {
      res.resume();
      resolveStatus(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolveStatus(0));
    req.end();
  });
}

async function waitForTls(name: string, port: number, child: Child): Promise<void> {
  await waitUntil(`${name} to answer GET / over TLS on 127.0.0.1:${port}`, START_TIMEOUT_MS, async () => (await getTlsStatus(port, '/')) === 200, child);
}

export async function readPortFile(file: string, child: Child): Promise<number> {
  let port = 0;
  await waitUntil('the upstream port file', START_TIMEOUT_MS, async () => {
    const text = await readFile(file, 'utf8').catch(() => '');
    port = Number(text);
    return Number.isInteger(port) && port > 0;
  }, child);
  return port;
}

/**
 * berth with the bench app (bench/upstream.mjs, which writes its port to `portFile`) as a catch-all app;
 * `affinity` (`cookie`, `ip`...) on its route when given.
 */
export async function startBerth(dir: string, portFile: string, tls: BenchCertificate | null = null, env: Record<string, string> = {}, workers: number | 'auto' = 1, affinity: string | null = null): Promise<ProxyTarget> {
  const port = await freePort();
  const tlsPort = tls === null ? null : await freePort();
  await mkdir(dir, { recursive: true });
  const source = join(dir, 'bench-app');
  await mkdir(source, { recursive: true });
  // The command is absolute, so the release needs no files of its own; a deploy source must still exist.
  await writeFile(join(source, 'README'), 'The proxy bench app: its command runs bench/upstream.mjs from the repository.\n');
  const config = {
    state_dir: join(dir, 'state'),
    listen: tls === null ? [`127.0.0.1:${port}`] : [`127.0.0.1:${port}`, { address: `127.0.0.1:${tlsPort}`, tls: true }],
    // The app is a catch-all, and the load tools connect to 127.0.0.1 (no SNI): the default certificate serves.
    ...(tls === null ? {} : { tls: { default_certificate: { certificate: tls.certificate, key: tls.key } } }),
    log_levels: { root: 'warn' },
    // Written only when asked for, so the bench also runs a berth that has no such key.
    ...(workers === 1 ? {} : { proxy: { workers } }),
    apps: {
      bench: {
        ...benchAppUser,
        source,
        env: { BENCH_PORT_FILE: portFile },
        processes: { web: { command: `"${process.execPath}" "${UPSTREAM}"`, instances: 1, concurrency: 64 } },
        routes: [{ path: '/', to: 'web', ...(affinity === null ? {} : { affinity }) }],
        health: { path: '/up' },
        queue: { max: 128, timeout: '10s' },
        db_connections: 64,
      },
    },
  };
  const file = join(dir, 'berth.yaml');
  await writeFile(file, YAML.stringify(config));
  const child = spawnChild('berth', process.execPath, [MAIN, 'start', '--config', file], { env: cleanEnv(env), log: join(dir, 'berth.log'), stopSignal: 'SIGTERM' });
  await waitUntil('GET /_berth/ready to answer 200', BERTH_READY_TIMEOUT_MS, async () => (await getStatus(port, '/_berth/ready')) === 200, child);
  if (tlsPort !== null) await waitForTls('berth', tlsPort, child);
  // The gateway process alone: the upstream is its child and is not the proxy's cost.
  return { child, port, tlsPort, proxyPids: () => [child.proc.pid!] };
}

export function nginxBinary(): string | null {
  return NGINX_CANDIDATES.find((p) => existsSync(p)) ?? null;
}

/**
 * nginx, one worker, proxying to the upstream with keep-alive. Its TLS server (with `tls`) offers h2 and
 * http/1.1 by ALPN, TLS 1.2 and 1.3 as berth does, and no cap on requests per connection (berth has none;
 * nginx's default of 1000 would add handshakes to its keep-alive figures).
 */
export async function startNginx(binary: string, dir: string, upstreamPort: number, tls: BenchCertificate | null = null, workers: number | 'auto' = 1): Promise<ProxyTarget> {
  const prefix = join(dir, workers === 1 ? 'nginx' : `nginx-${workers}`);
  await mkdir(prefix, { recursive: true });
  const port = await freePort();
  const tlsPort = tls === null ? null : await freePort();
  const location = `    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }`;
  const tlsServer =
    tls === null
      ? ''
      : `
  server {
    listen 127.0.0.1:${tlsPort} ssl http2;
    ssl_certificate ${tls.certificate};
    ssl_certificate_key ${tls.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 100000000;
${location}
  }`;
  // As root, nginx's workers would run as nobody, who cannot write request bodies into this run's directory.
  const user = process.getuid?.() === 0 ? 'user root;\n' : '';
  const conf = `# written by bench/proxy-targets.ts for one run
${user}daemon off;
worker_processes ${workers};
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_max_body_size 16m;
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  upstream bench_upstream {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
${location}
  }${tlsServer}
}
`;
  await writeFile(join(prefix, 'nginx.conf'), conf);
  // -e: the compiled-in error log (/var/log/nginx) may not be writable; the config's one takes over once read.
  const child = spawnChild('nginx', binary, ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-e', join(prefix, 'error.log')], {
    log: join(prefix, 'stdout.log'),
    stopSignal: 'SIGQUIT',
  });
  child.log = join(prefix, 'error.log');
  await waitUntil('nginx to proxy GET /', START_TIMEOUT_MS, async () => (await getStatus(port, '/')) === 200, child);
  if (tlsPort !== null) await waitForTls('nginx', tlsPort, child);
  return { child, port, tlsPort, proxyPids: () => withChildren(child.proc.pid!) };
}

/** HAProxy with one thread (`nbthread 1`), HTTP mode, keep-alive to the upstream as nginx and berth have. */
export async function startHaproxy(binary: string, dir: string, upstreamPort: number): Promise<ProxyTarget> {
  const prefix = join(dir, 'haproxy');
  await mkdir(prefix, { recursive: true });
  const port = await freePort();
  const conf = `# written by bench/proxy-targets.ts for one run
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
frontend bench
  bind 127.0.0.1:${port}
  default_backend upstream
backend upstream
  http-reuse always
  server up 127.0.0.1:${upstreamPort}
`;
  await writeFile(join(prefix, 'haproxy.cfg'), conf);
  // -db: stay in the foreground; logs go to the output file.
  const child = spawnChild('haproxy', binary, ['-db', '-f', join(prefix, 'haproxy.cfg')], { log: join(prefix, 'haproxy.log'), stopSignal: 'SIGUSR1' });
  await waitUntil('haproxy to proxy GET /', START_TIMEOUT_MS, async () => (await getStatus(port, '/')) === 200, child);
  return { child, port, tlsPort: null, proxyPids: () => withChildren(child.proc.pid!) };
}

/** Caddy as a plain reverse proxy (no automatic HTTPS, no admin endpoint) with GOMAXPROCS=1: one core. */
export async function startCaddy(binary: string, dir: string, upstreamPort: number): Promise<ProxyTarget> {
  const prefix = join(dir, 'caddy');
  await mkdir(prefix, { recursive: true });
  const port = await freePort();
  const conf = `# written by bench/proxy-targets.ts for one run
{
  admin off
  auto_https off
  persist_config off
}
http://127.0.0.1:${port} {
  reverse_proxy 127.0.0.1:${upstreamPort}
}
`;
  await writeFile(join(prefix, 'Caddyfile'), conf);
  const child = spawnChild('caddy', binary, ['run', '--config', join(prefix, 'Caddyfile'), '--adapter', 'caddyfile'], {
    env: cleanEnv({ GOMAXPROCS: '1', HOME: prefix, XDG_DATA_HOME: prefix, XDG_CONFIG_HOME: prefix }),
    log: join(prefix, 'caddy.log'),
    stopSignal: 'SIGTERM',
  });
  await waitUntil('caddy to proxy GET /', START_TIMEOUT_MS, async () => (await getStatus(port, '/')) === 200, child);
  return { child, port, tlsPort: null, proxyPids: () => [child.proc.pid!] };
}

// ---- wrk's output ---------------------------------------------------------------------------------

/** What one wrk run measured. */
export interface WrkFigures {
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx responses plus socket errors and timeouts. */
  errors: number;
}

/** "1.23ms", "456.00us", "1.5s", "2m" -> milliseconds. */
function wrkDuration(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text);
  if (!m) throw new Error(`unexpected wrk duration "${text}"`);
  const factor = { us: 0.001, ms: 1, s: 1_000, m: 60_000 }[m[2] as 'us' | 'ms' | 's' | 'm'];
  return Number(m[1]) * factor;
}

/** wrk's report, run with --latency. */
export function parseWrk(out: string): WrkFigures {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const p50 = /^\s+50%\s+(\S+)/m.exec(out);
  const p99 = /^\s+99%\s+(\S+)/m.exec(out);
  if (!rps || !p50 || !p99) throw new Error(`could not read wrk's output:\n${out}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = socket ? socket.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0;
  return { requestsPerSec: Number(rps[1]), p50Ms: wrkDuration(p50[1]), p99Ms: wrkDuration(p99[1]), errors: non2xx + socketErrors };
}

// ---- both targets, one upstream ---------------------------------------------------------------------

/** What started: berth (whose instance is the upstream) and nginx, each null when skipped, and why. */
export interface StartedTargets {
  berth: ProxyTarget | null;
  nginx: ProxyTarget | null;
  upstreamPort: number;
  skipped: Record<string, string>;
}

/**
 * Starts berth with the bench app, then nginx in front of berth's instance of it. When berth does not
 * start, the upstream runs alone so nginx (and the upstream itself) can still be measured.
 */
export async function startTargets(dir: string, opts: { nginx: boolean; tls: BenchCertificate | null; berthEnv?: Record<string, string>; workers?: number | 'auto' }): Promise<StartedTargets> {
  const portFile = join(dir, 'upstream.port');
  const skipped: Record<string, string> = {};
  let berth: ProxyTarget | null = null;
  let upstream: Child;
  note(`starting berth with the bench app${opts.tls ? ' and a TLS listener' : ''}`);
  try {
    berth = await startBerth(dir, portFile, opts.tls, opts.berthEnv, opts.workers ?? 1);
    upstream = berth.child;
  } catch (err) {
    note(`berth did not start, measuring without it: ${(err as Error).message}`);
    skipped.berth = 'did not start (see above)';
    await stopStarted();
    upstream = spawnChild('upstream', process.execPath, [UPSTREAM], { env: cleanEnv({ PORT: '0', BENCH_PORT_FILE: portFile }), log: join(dir, 'upstream.log'), stopSignal: 'SIGTERM' });
  }
  const upstreamPort = await readPortFile(portFile, upstream);

  let nginx: ProxyTarget | null = null;
  const binary = nginxBinary();
  if (!opts.nginx) skipped.nginx = '--no-nginx';
  else if (binary === null) skipped.nginx = `not installed (${NGINX_CANDIDATES[0]})`;
  else {
    note(`starting ${binary}`);
    try {
      nginx = await startNginx(binary, dir, upstreamPort, opts.tls, opts.workers ?? 1);
    } catch (err) {
      note(`nginx did not start: ${(err as Error).message}`);
      skipped.nginx = 'did not start (see above)';
    }
  }
  return { berth, nginx, upstreamPort, skipped };
}
