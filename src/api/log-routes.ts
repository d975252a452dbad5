/**
 * `GET /v1/apps/:app/logs`: the app's process logs, merged by time, optionally followed; or the output
 * of one deploy (`deploy=<id>`) or one task run (`task=<id>`). Plain text, one log line per line.
 *
 * Process logs are `<state_dir>/apps/<app>/logs/<process>.log` (rotated to `.1`, `.2`...), written by
 * the supervisor with lines `<ISO time> <process>.<index> <release> <out|err|berth> <text>`. Both
 * generations of a deploy write the same file, so following it follows the app across deploys.
 */
import { PROCESS_NAME_RE } from '../config/schema.ts';
import { open, readdir, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { Control } from './control.ts';
import type { RouteTable } from './request.ts';
import { permits } from './auth.ts';

/** Lines sent when `lines` is not given. */
export const DEFAULT_LOG_LINES = 100;
const MAX_LOG_LINES = 10_000;
/** How often a follow looks for new lines (and rotations). */
export const FOLLOW_POLL_MS = 200;
/** Rotated files looked at, at most, when the newest ones do not hold enough lines. */
const MAX_ROTATED = 20;
const READ_CHUNK = 64 * 1024;
const DEPLOY_ID_RE = /^d\d{14}-[0-9a-f]{6}$/;
const DEPLOY_LOG_RE = /^deploy-d\d{14}-[0-9a-f]{6}\.log$/;

/** The time a log line starts with; lines without one sort first. */
function timeOf(line: string): string {
  const sp = line.indexOf(' ');
  return sp === -1 ? '' : line.slice(0, sp);
}

/** A stable sort by the leading ISO time: lines of several files in time order. */
function byTime(lines: string[]): string[] {
  return lines
    .map((line, i) => ({ line, i, t: timeOf(line) }))
    .sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : a.i - b.i))
    .map((x) => x.line);
}

/** The last `n` complete lines of the first `end` bytes of a file, reading backwards from `end`. */
async function lastLines(fh: FileHandle, end: number, n: number): Promise<string[]> {
  const chunks: Buffer[] = [];
  let pos = end;
  let newlines = 0;
  while (pos > 0 && newlines <= n) {
    const size = Math.min(READ_CHUNK, pos);
    pos -= size;
    const buf = Buffer.alloc(size);
    const { bytesRead } = await fh.read(buf, 0, size, pos);
    const chunk = buf.subarray(0, bytesRead);
    for (const b of chunk) if (b === 10) newlines++;
    chunks.unshift(chunk);
  }
  let text = Buffer.concat(chunks).toString('utf8');
  // A line still being written (no newline yet) is left for the follow to pick up whole.
  const lastNl = text.lastIndexOf('\n');
  text = lastNl === -1 ? '' : text.slice(0, lastNl);
  if (text === '') return [];
  const lines = text.split('\n');
  // The first piece may be cut in the middle when the read stopped inside it.
  if (pos > 0) lines.shift();
  return lines.slice(-n);
}

/** The last `n` lines of a log and its rotated files (`.1` newest); and where the live file ended. */
async function tailOf(file: string, n: number): Promise<{ lines: string[]; ino: number | null; size: number }> {
  let ino: number | null = null;
  let size = 0;
  let lines: string[] = [];
  // The live file is always measured, even for no lines: a follow starts where it ends.
  for (let k = 0; k <= MAX_ROTATED && (k === 0 || lines.length < n); k++) {
    const path = k === 0 ? file : `${file}.${k}`;
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch {
      if (k === 0) continue;
      break;
    }
    try {
      const st = await fh.stat();
      if (k === 0) {
        ino = st.ino;
        size = st.size;
      }
      if (lines.length < n) lines = [...(await lastLines(fh, st.size, n - lines.length)), ...lines];
    } finally {
      await fh.close();
    }
  }
  return { lines, ino, size };
}

/**
 * Follows one log file from a position: reads what was appended, and when the file is rotated (a new
 * inode at the path) reads the rest of the old one through its open handle before switching.
 */
class FileFollower {
  readonly file: string;
  #fh: FileHandle | null = null;
  #ino: number | null;
  #pos: number;
  #partial = '';
  /** Every app's logs at once (`GET /v1/logs`): the app each line is of. */
  #app: string | null;

  constructor(file: string, ino: number | null, pos: number, app: string | null = null) {
    this.file = file;
    this.#ino = ino;
    this.#pos = pos;
    this.#app = app;
  }

  /** New complete lines since the last call (named by their app, when it has one). */
  async poll(): Promise<string[]> {
    const lines = await this.#poll();
    const app = this.#app;
    return app === null ? lines : lines.map((line) => ofApp(line, app));
  }

  async #poll(): Promise<string[]> {
    const out: string[] = [];
    if (this.#fh === null && this.#ino !== null) {
      // Open what was measured; if it is already rotated away, the new file is read from its start.
      const st = await stat(this.file).catch(() => null);
      if (st && st.ino === this.#ino) this.#fh = await open(this.file, 'r').catch(() => null);
      else if ((await stat(`${this.file}.1`).catch(() => null))?.ino === this.#ino) {
        // Rotated since it was measured: the rest of it is in `.1`.
        this.#fh = await open(`${this.file}.1`, 'r').catch(() => null);
      }
      if (this.#fh === null) {
        this.#ino = null;
        this.#pos = 0;
      }
    }
    if (this.#fh) await this.#drain(out);
    const st = await stat(this.file).catch(() => null);
    if (st && st.ino !== this.#ino) {
      // Rotated (or created): what reached the old file before the rotation is read first.
      if (this.#fh) {
        await this.#drain(out);
        if (this.#partial !== '') out.push(this.#partial);
      }
      await this.#fh?.close().catch(() => {});
      this.#fh = await open(this.file, 'r').catch(() => null);
      this.#ino = this.#fh ? st.ino : null;
      this.#pos = 0;
      this.#partial = '';
      if (this.#fh) await this.#drain(out);
    } else if (st && this.#fh && st.size < this.#pos) {
      // Truncated in place.
      this.#pos = 0;
      this.#partial = '';
      await this.#drain(out);
    }
    return out;
  }

  async #drain(out: string[]): Promise<void> {
    const buf = Buffer.alloc(READ_CHUNK);
    for (;;) {
      const { bytesRead } = await this.#fh!.read(buf, 0, READ_CHUNK, this.#pos);
      if (bytesRead === 0) return;
      this.#pos += bytesRead;
      const text = this.#partial + buf.subarray(0, bytesRead).toString('utf8');
      const parts = text.split('\n');
      this.#partial = parts.pop()!;
      out.push(...parts);
    }
  }

  async close(): Promise<void> {
    await this.#fh?.close().catch(() => {});
    this.#fh = null;
  }
}

/** Process types with logs: configured or running ones, and any `<name>.log` in the logs dir. */
async function processNames(gateway: Control, app: string, logsDir: string): Promise<Set<string>> {
  const names = new Set<string>();
  const target = gateway.taskTarget(app);
  for (const name of Object.keys(target?.config.processes ?? {})) names.add(name);
  for (const gen of gateway.supervisor.generations(app)) for (const name of Object.keys(gen.processes)) names.add(name);
  for (const f of await readdir(logsDir).catch(() => [] as string[])) {
    if (!f.endsWith('.log') || DEPLOY_LOG_RE.test(f)) continue;
    const name = f.slice(0, -4);
    if (PROCESS_NAME_RE.test(name)) names.add(name);
  }
  return names;
}

function isFollow(url: URL): boolean {
  const v = url.searchParams.get('follow');
  return v === '1' || v === 'true';
}

function startText(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
}

function writeLines(res: ServerResponse, lines: string[]): void {
  if (lines.length > 0) res.write(lines.join('\n') + '\n');
}

/**
 * Polls followers until the client goes away (or `until` resolves), writing new lines in time order.
 * `more` may add followers as the app grows new process types.
 */
async function follow(req: IncomingMessage, res: ServerResponse, followers: FileFollower[], more: (() => Promise<FileFollower[]>) | null, until: Promise<void> | null): Promise<void> {
  let done = false;
  const stop = () => {
    done = true;
  };
  req.socket.once('close', stop);
  res.once('close', stop);
  void until?.then(stop);
  // Each file is read in order, but one file's writer may flush a moment after another's: a line is
  // held until it is a poll old (or has waited two polls), so lines of several files go out in time order.
  let pending: { line: string; t: string; tick: number }[] = [];
  let tick = 0;
  const send = (lines: string[]) => {
    if (!res.writableEnded && !res.destroyed) writeLines(res, lines);
  };
  try {
    while (!done) {
      await new Promise((resolve) => setTimeout(resolve, FOLLOW_POLL_MS));
      tick++;
      if (more) followers.push(...(await more()));
      for (const f of followers) for (const line of await f.poll()) pending.push({ line, t: timeOf(line), tick });
      if (pending.length === 0) continue;
      pending.sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
      const cut = new Date(Date.now() - FOLLOW_POLL_MS).toISOString();
      let k = 0;
      while (k < pending.length && (pending[k].t <= cut || pending[k].tick <= tick - 2)) k++;
      send(pending.slice(0, k).map((p) => p.line));
      pending = pending.slice(k);
    }
    // What was written just before the end is still sent.
    for (const f of followers) for (const line of await f.poll()) pending.push({ line, t: timeOf(line), tick });
    send(byTime(pending.map((p) => p.line)));
  } finally {
    req.socket.off('close', stop);
    for (const f of followers) await f.close();
    if (!res.writableEnded) res.end();
  }
}

/** Registers `GET /v1/apps/:app/logs`. */
/**
 * A process log line of `app` as every app's logs show it: the instance named `<app>/<process>.<index>`,
 * the time still first (so lines of several apps merge by time).
 */
function ofApp(line: string, app: string): string {
  const first = line.indexOf(' ');
  return first === -1 ? `${app} ${line}` : `${line.slice(0, first)} ${app}/${line.slice(first + 1)}`;
}

export function registerLogRoutes(routes: RouteTable, gateway: Control): void {
  // Every app's process logs, merged by time (`berth logs` with no app); a caller limited to some apps sees those.
  routes.add('GET', '/v1/logs', async (_p, url, _body, req, res, ctx) => {
    const rawLines = url.searchParams.get('lines');
    const n = rawLines === null ? DEFAULT_LOG_LINES : Number(rawLines);
    if (!Number.isInteger(n) || n < 0 || n > MAX_LOG_LINES) throw new BerthError(ErrorCodes.badRequest, `"lines" must be an integer from 0 to ${MAX_LOG_LINES}, got "${rawLines}"`);
    const sources: { app: string; name: string; file: string; logsDir: string }[] = [];
    for (const app of gateway.appNames().filter((a) => permits(ctx, a))) {
      const logsDir = join(gateway.config.stateDir, 'apps', app, 'logs');
      for (const name of [...(await processNames(gateway, app, logsDir))].sort()) sources.push({ app, name, file: join(logsDir, `${name}.log`), logsDir });
    }
    const tails = await Promise.all(sources.map((s) => tailOf(s.file, n)));
    startText(res);
    writeLines(res, n === 0 ? [] : byTime(tails.flatMap((t, i) => t.lines.map((line) => ofApp(line, sources[i]!.app)))).slice(-n));
    if (!isFollow(url)) {
      res.end();
      return undefined;
    }
    const seen = new Set(sources.map((s) => `${s.app}/${s.name}`));
    const followers = sources.map((s, i) => new FileFollower(s.file, tails[i]!.ino, tails[i]!.size, s.app));
    const apps = [...new Set(sources.map((s) => s.app))];
    const more = async () => {
      const added: FileFollower[] = [];
      for (const app of apps) {
        const logsDir = join(gateway.config.stateDir, 'apps', app, 'logs');
        for (const name of await processNames(gateway, app, logsDir)) {
          if (seen.has(`${app}/${name}`)) continue;
          seen.add(`${app}/${name}`);
          added.push(new FileFollower(join(logsDir, `${name}.log`), null, 0, app));
        }
      }
      return added;
    };
    await follow(req, res, followers, more, null);
    return undefined;
  });

  routes.add('GET', '/v1/apps/:app/logs', async (p, url, _body, req, res) => {
    const app = p.app;
    if (!gateway.taskTarget(app)) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
    const rawLines = url.searchParams.get('lines');
    const n = rawLines === null ? DEFAULT_LOG_LINES : Number(rawLines);
    if (!Number.isInteger(n) || n < 0 || n > MAX_LOG_LINES) throw new BerthError(ErrorCodes.badRequest, `"lines" must be an integer from 0 to ${MAX_LOG_LINES}, got "${rawLines}"`);
    const logsDir = join(gateway.config.stateDir, 'apps', app, 'logs');
    const deployId = url.searchParams.get('deploy');
    const taskId = url.searchParams.get('task');
    const proc = url.searchParams.get('process');
    if ([deployId, taskId, proc].filter((v) => v !== null).length > 1) throw new BerthError(ErrorCodes.badRequest, 'give at most one of "process", "deploy" and "task"');

    if (taskId !== null) {
      if (isFollow(url)) throw new BerthError(ErrorCodes.badRequest, 'a task run\'s output cannot be followed here; `berth run` streams it live');
      const run = await gateway.scheduler.get(taskId);
      if (!run || run.app !== app) throw new BerthError(ErrorCodes.notFound, `no task run "${taskId}" of app "${app}"`);
      const lines = run.output === '' ? [] : run.output.replace(/\n$/, '').split('\n');
      startText(res);
      writeLines(res, n === 0 ? [] : lines.slice(-n));
      res.end();
      return undefined;
    }

    if (deployId !== null) {
      if (!DEPLOY_ID_RE.test(deployId)) throw new BerthError(ErrorCodes.badRequest, `"deploy" must be a deploy id like d20260101120000-abcdef, got "${deployId}"`);
      const found = await gateway.deployer.get(deployId);
      if (!found || found.deploy.app !== app) throw new BerthError(ErrorCodes.notFound, `no deploy "${deployId}" of app "${app}"`);
      const file = join(logsDir, `deploy-${deployId}.log`);
      const tail = await tailOf(file, n);
      startText(res);
      writeLines(res, tail.lines);
      const live = found.live && found.live.state === 'running' ? found.live : null;
      if (!isFollow(url) || !live) {
        res.end();
        return undefined;
      }
      await follow(req, res, [new FileFollower(file, tail.ino, tail.size)], null, live.done);
      return undefined;
    }

    let names: string[];
    if (proc !== null) {
      if (!PROCESS_NAME_RE.test(proc)) throw new BerthError(ErrorCodes.badRequest, `"process" must be a process type name matching ${PROCESS_NAME_RE.source}, got "${proc}"`);
      if (!(await processNames(gateway, app, logsDir)).has(proc)) throw new BerthError(ErrorCodes.notFound, `app "${app}" has no process type "${proc}" and no logs for one`);
      names = [proc];
    } else {
      names = [...(await processNames(gateway, app, logsDir))].sort();
    }
    const tails = await Promise.all(names.map((name) => tailOf(join(logsDir, `${name}.log`), n)));
    startText(res);
    writeLines(res, n === 0 ? [] : byTime(tails.flatMap((t) => t.lines)).slice(-n));
    if (!isFollow(url)) {
      res.end();
      return undefined;
    }
    const seen = new Set(names);
    const followers = names.map((name, i) => new FileFollower(join(logsDir, `${name}.log`), tails[i].ino, tails[i].size));
    // A deploy may bring process types the app did not have (a new Procfile line): follow them too.
    const more =
      proc !== null
        ? null
        : async () => {
            const added: FileFollower[] = [];
            for (const name of await processNames(gateway, app, logsDir)) {
              if (seen.has(name)) continue;
              seen.add(name);
              added.push(new FileFollower(join(logsDir, `${name}.log`), null, 0));
            }
            return added;
          };
    await follow(req, res, followers, more, null);
    return undefined;
  });
}
