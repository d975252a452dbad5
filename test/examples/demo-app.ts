/**
 * Runs a demo app from examples/ as a real child process for its tests. Kept apart from
 * test/helpers/gateway.ts on purpose: the demo apps must stay testable without the gateway.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { removeAfter } from '../helpers/cleanup.ts';

export const EXAMPLES = resolve(dirname(fileURLToPath(import.meta.url)), '../../examples');

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  text(): string;
  json<T = any>(): T;
}

export interface RequestOptions {
  path?: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  timeoutMs?: number;
}

/** A free loopback port: bind 127.0.0.1:0, read the port, release it. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/** A temp dir removed after the test. */
export async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-ex-'));
  removeAfter(t, dir);
  return dir;
}

/** Polls `fn` until it returns a truthy value, or throws after the deadline. */
export async function waitFor<T>(fn: () => T | Promise<T>, message: string, timeoutMs = 15_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await fn();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${message}${last ? `: ${String(last)}` : ''}`);
}

/** One HTTP request on a fresh connection (no agent) to a port or a unix socket. */
export function httpRequest(target: { port?: number; socketPath?: string }, opts: RequestOptions = {}): Promise<Reply> {
  return new Promise((resolveReply, reject) => {
    const req = request(
      { host: '127.0.0.1', port: target.port, socketPath: target.socketPath, path: opts.path ?? '/', method: opts.method ?? 'GET', headers: opts.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          resolveReply({ status: res.statusCode ?? 0, headers: res.headers, body, text: () => body.toString('utf8'), json: () => JSON.parse(body.toString('utf8')) });
        });
      },
    );
    req.setTimeout(opts.timeoutMs ?? 30_000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Resolves true when a TCP connect to the port is refused (nothing listens), false when it connects. */
export function connectRefused(port: number): Promise<boolean> {
  return new Promise((resolveRefused, reject) => {
    const socket: Socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolveRefused(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' ? resolveRefused(true) : reject(err)));
  });
}

export interface DemoAppOptions {
  /** Executable and arguments, run in `cwd`. */
  command: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  /** How to tell it is up: GET /up answers 200 on this port or socket. */
  port?: number;
  socketPath?: string;
}

/** A demo app running as a child process in its own process group, killed after the test. */
export class DemoApp {
  readonly proc: ChildProcess;
  readonly port: number | undefined;
  readonly socketPath: string | undefined;
  readonly exited: Promise<Exit>;
  stdout = '';
  stderr = '';

  constructor(t: TestContext, opts: DemoAppOptions) {
    this.port = opts.port;
    this.socketPath = opts.socketPath;
    this.proc = spawn(opts.command, opts.args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.proc.stdout!.on('data', (c: Buffer) => (this.stdout += c.toString('utf8')));
    this.proc.stderr!.on('data', (c: Buffer) => (this.stderr += c.toString('utf8')));
    this.exited = new Promise((r) => this.proc.once('exit', (code, signal) => r({ code, signal })));
    t.after(async () => {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
      try {
        process.kill(-this.proc.pid!, 'SIGKILL');
      } catch {
        // Already gone between the check and the kill.
      }
      await this.exited;
    });
  }

  /** Starts the app and waits until GET /up answers 200 (or the app exits, which fails). */
  static async start(t: TestContext, opts: DemoAppOptions): Promise<DemoApp> {
    const app = new DemoApp(t, opts);
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (app.done) throw new Error(`${opts.args.join(' ')} exited early (${app.proc.exitCode ?? app.proc.signalCode}): ${app.stderr}`);
      const up = await app.request({ path: '/up', timeoutMs: 2_000 }).then((r) => r.status === 200, () => false);
      if (up) return app;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`timed out waiting for ${opts.args.join(' ')} to answer /up: ${app.stderr}`);
  }

  request(opts: RequestOptions = {}): Promise<Reply> {
    return httpRequest({ port: this.port, socketPath: this.socketPath }, opts);
  }

  /** True once the process has exited. */
  get done(): boolean {
    return this.proc.exitCode !== null || this.proc.signalCode !== null;
  }
}
