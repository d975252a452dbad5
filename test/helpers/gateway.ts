/**
 * Test helpers that start REAL gateways: as a child process running `src/main.ts start` (for CLI,
 * signal and exit-status behaviour) or in-process (for tests that need shrunk timings). Everything
 * lives in a temp dir and is cleaned up with the test.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile, mkdir, cp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'node:http';
import { Writable } from 'node:stream';
import type { TestContext } from 'node:test';
import YAML from 'yaml';
import { loadConfig } from '../../src/config/load.ts';
import { LoggerFactory } from '../../src/lib/logger.ts';
import { Gateway, type GatewayOptions } from '../../src/gateway.ts';
import { removeAfter } from './cleanup.ts';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const MAIN = join(ROOT, 'src/main.ts');
export const FIXTURE_APP = join(ROOT, 'test/fixtures/apps/web');
/** The command that runs the fixture web app with this Node. */
export const FIXTURE_WEB_COMMAND = `"${process.execPath}" server.mjs`;

/** A temp dir removed after the test. Short, so unix socket paths stay under the 107-byte limit. */
export async function tempDir(t: TestContext, prefix = 'berth-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  removeAfter(t, dir);
  return dir;
}

/** Copies the fixture web app into `<dir>/<name>` and returns its path. */
export async function fixtureApp(dir: string, name = 'web-src'): Promise<string> {
  const dest = join(dir, name);
  await cp(FIXTURE_APP, dest, { recursive: true });
  return dest;
}

/** True when the tests run as root (as CI does). */
export const RUNNING_AS_ROOT = process.getuid?.() === 0;

/**
 * Writes a berth.yaml (object -> YAML) and returns its path.
 *
 * When the tests run as root, every app that names no `user` gets `user: root`. Without it berth (as
 * root) would run the app as the owner of its source, which in a test is root, so as `default_user`
 * (nobody); and nobody may not be able to exec Node from the checkout (node_modules/node/bin/node in a
 * CI clone under a private home directory) nor read the test's temp dirs. Ordinary tests are about
 * other things; the privilege tests (test/gateway/privileges.test.ts) set users explicitly.
 */
export async function writeConfig(dir: string, config: unknown): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'berth.yaml');
  await writeFile(file, typeof config === 'string' ? rootUserText(config) : YAML.stringify(RUNNING_AS_ROOT ? withRootUser(config) : config));
  return file;
}

function withRootUser(config: unknown): unknown {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) return config;
  const apps = (config as { apps?: unknown }).apps;
  if (apps === null || typeof apps !== 'object' || Array.isArray(apps)) return config;
  const out: Record<string, unknown> = {};
  for (const [name, app] of Object.entries(apps as Record<string, unknown>)) {
    out[name] = app !== null && typeof app === 'object' && !Array.isArray(app) && !('user' in app) ? { ...app, user: 'root' } : app;
  }
  return { ...(config as object), apps: out };
}

/** The same for a config given as YAML text; text that does not parse is written as it is. */
function rootUserText(text: string): string {
  if (!RUNNING_AS_ROOT) return text;
  const doc = YAML.parseDocument(text);
  if (doc.errors.length > 0) return text;
  const apps = doc.get('apps', true);
  if (!YAML.isMap(apps)) return text;
  let changed = false;
  for (const pair of apps.items) {
    if (YAML.isMap(pair.value) && !pair.value.has('user')) {
      pair.value.set('user', 'root');
      changed = true;
    }
  }
  return changed ? String(doc) : text;
}

export async function waitFor<T>(fn: () => T | Promise<T>, opts: { timeoutMs?: number; intervalMs?: number; message?: string } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
  throw new Error(`timed out waiting for ${opts.message ?? 'condition'}${last ? `: ${String(last)}` : ''}`);
}

export interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json<T = any>(): T;
}

/** One HTTP request over a fresh connection (no agent), to a TCP port or a unix socket. */
export function http(target: { port?: number; socketPath?: string }, opts: { path?: string; method?: string; host?: string; headers?: Record<string, string>; body?: string | Buffer; timeoutMs?: number } = {}): Promise<HttpResult> {
  return new Promise((resolvePromise, reject) => {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (opts.host) headers.host = opts.host;
    const req = request(
      { host: '127.0.0.1', port: target.port, socketPath: target.socketPath, path: opts.path ?? '/', method: opts.method ?? 'GET', headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) });
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(opts.timeoutMs ?? 30_000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

export interface ChildGateway {
  proc: ChildProcess;
  port: number;
  socket: string;
  /** Parsed JSON log lines so far. */
  logs: any[];
  /** Raw stderr so far. */
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  api<T = any>(path: string, method?: string): Promise<T>;
}

/**
 * Starts `berth start --config <file>` as a child process and waits until it listens. The config should
 * listen on 127.0.0.1:0; the bound port is read from `GET /v1/status` on the control socket.
 */
export async function spawnGateway(t: TestContext, configPath: string, opts: { env?: Record<string, string>; /** false: apps without a user keep berth's default (privilege tests) */ rootUser?: boolean } = {}): Promise<ChildGateway> {
  const rootUser = opts.rootUser === false ? {} : await rootUserOverrides(configPath, { ...process.env, ...opts.env });
  const proc = spawn(process.execPath, [MAIN, 'start', '--config', configPath], {
    env: { ...process.env, ...rootUser, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: any[] = [];
  let stderr = '';
  let buf = '';
  proc.stdout!.on('data', (c: Buffer) => {
    buf += c.toString('utf8');
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        logs.push(JSON.parse(line));
      } catch {
        logs.push({ raw: line });
      }
    }
  });
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  t.after(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    }
  });
  // The control socket is where the config puts it; the bound port (listen may be :0) comes from status.
  const config = await loadConfig({ configPath, environ: { ...process.env, ...opts.env } });
  const socket = config.control.socket;
  const status = await Promise.race([
    waitFor(
      async () => {
        const res = await http({ socketPath: socket }, { path: '/v1/status', timeoutMs: 2_000 });
        const body = res.json();
        return body.state === 'running' ? body : null;
      },
      { timeoutMs: 30_000, message: 'gateway running' },
    ),
    exited.then(({ code }) => {
      throw new Error(`gateway exited with ${code} before listening: ${stderr}`);
    }),
  ]);
  const address: string = status.listen[0];
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  return {
    proc,
    port,
    socket,
    logs,
    stderr: () => stderr,
    exited,
    async api(path, method = 'GET') {
      const res = await http({ socketPath: socket }, { path, method });
      return res.json();
    },
  };
}

/** Waits until the child gateway's front door answers `/_berth/ready` with 200. */
export async function untilReady(gw: ChildGateway, opts: { timeoutMs?: number; message?: string } = {}): Promise<void> {
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: opts.timeoutMs ?? 30_000, message: opts.message ?? 'ready' });
}

/** Pids of the active generation's instances of `app`, sorted. */
export async function activePids(gw: ChildGateway, app = 'shop'): Promise<number[]> {
  const status = await gw.api(`/v1/apps/${app}`);
  return status.generations.find((g: any) => g.active).instances.map((i: any) => i.pid).sort();
}

/**
 * Starts a deploy of `source` through the control API and waits until it is in wait_healthy; returns its
 * id. For a source whose processes never get healthy (gatedBoot), to catch the gateway mid-deploy.
 */
export async function deployUntilWaitHealthy(gw: ChildGateway, source: string, app = 'shop'): Promise<string> {
  const started = await http({ socketPath: gw.socket }, { path: `/v1/apps/${app}/deploys`, method: 'POST', body: JSON.stringify({ source }), headers: { 'content-type': 'application/json' } });
  assert.equal(started.status, 202, started.body);
  const id: string = started.json().id;
  await waitFor(async () => (await gw.api(`/v1/deploys/${id}`)).events.some((e: any) => e.step === 'wait_healthy' && e.status === 'started'), { message: 'the deploy in wait_healthy' });
  return id;
}

/** Whether a process group is there, as `kill(-pgid, 0)` sees it (EPERM: there, but another user's). */
export function processGroupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * For a config file not written by writeConfig (examples/berth.yaml): `BERTH_APPS__<APP>__USER=root`
 * for each app without a user, when the tests run as root, for the reason writeConfig gives.
 */
async function rootUserOverrides(configPath: string, environ: Record<string, string | undefined>): Promise<Record<string, string>> {
  if (!RUNNING_AS_ROOT) return {};
  let apps: string[];
  try {
    const config = await loadConfig({ configPath, environ });
    apps = Object.values(config.apps).filter((a) => a.user === null).map((a) => a.name);
  } catch {
    return {}; // a bad config: the gateway says so itself
  }
  const env: Record<string, string> = {};
  for (const name of apps) env[`BERTH_APPS__${name.toUpperCase().replaceAll('-', '_')}__USER`] = 'root';
  return env;
}

/** Runs the berth CLI to completion. */
export function runCli(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const proc = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...opts.env }, cwd: opts.cwd ?? ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c));
    proc.stderr.on('data', (c: Buffer) => (stderr += c));
    const timer = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** A pino destination that keeps lines in memory, for in-process gateways. */
export class LogSink extends Writable {
  lines: any[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) if (line) this.lines.push(JSON.parse(line));
    cb();
  }
}

/** Starts a gateway in this process (real sockets and child processes) and stops it after the test. */
export async function startGateway(t: TestContext, configPath: string, opts: Partial<Pick<GatewayOptions, 'supervisorTiming'>> & { environ?: Record<string, string> } = {}): Promise<{ gateway: Gateway; port: number; sink: LogSink }> {
  const environ = { ...process.env, ...opts.environ };
  const config = await loadConfig({ configPath, environ: { ...environ, ...(await rootUserOverrides(configPath, environ)) } });
  const sink = new LogSink();
  const loggers = new LoggerFactory(config.logLevels, sink);
  const gateway = new Gateway({ config, loggers, supervisorTiming: opts.supervisorTiming });
  t.after(async () => {
    await gateway.stop();
  });
  await gateway.start();
  const addr = gateway.proxy.addresses()[0];
  return { gateway, port: addr.kind === 'tcp' ? addr.port : 0, sink };
}
