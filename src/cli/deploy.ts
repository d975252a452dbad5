/**
 * `berth deploy`, `berth rollback` and `berth reload`: start the operation on the gateway, then follow
 * its step events live. The operation belongs to the gateway: Ctrl-C stops watching, not deploying.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { DeployEvent, DeployRecord } from '../store/store.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { humanDuration } from '../lib/durations.ts';
import type { ControlClient } from './client.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const DEPLOY_USAGE = 'berth deploy <app> [source] [--json]';
export const ROLLBACK_USAGE = 'berth rollback <app> [release] [--json]';
export const RELOAD_USAGE = 'berth reload <app> [--json]';

/** Log lines a failed deploy prints at most (SPEC § Deploys: the last 20). */
const FAILED_LOG_LINES = 20;
/** Steps that can take a while get a line when they start, not only when they end. */
const SLOW_STEPS = new Set(['prepare', 'build', 'release', 'wait_healthy', 'drain', 'stop_old']);

/**
 * A local source path is made absolute here, because the gateway resolves paths from its own working
 * directory. Git URLs (`scheme://`, `git@host:`) pass unchanged; `path#ref` keeps its ref.
 */
export function resolveSourceArg(source: string, cwd = process.cwd()): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source) || /^[^/]+@[^:]+:/.test(source)) return source;
  const hash = source.lastIndexOf('#');
  const path = hash > 0 && !existsSync(resolve(cwd, source)) ? source.slice(0, hash) : source;
  const ref = path === source ? '' : source.slice(hash);
  return resolve(cwd, path) + ref;
}

export async function deploy(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, CLIENT_OPTIONS, true);
  if (positionals.length < 1 || positionals.length > 2) throw new UsageError('expected an app name and an optional source');
  const [app, source] = positionals;
  const client = await clientFor(values);
  const body = source ? { source: resolveSourceArg(source) } : {};
  const { id } = await client.call<{ id: string }>('POST', `/v1/apps/${encodeURIComponent(app)}/deploys`, body);
  return follow(client, id, `deploying ${app}${source ? ` from ${body.source}` : ''}`, values.json);
}

export async function rollback(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, CLIENT_OPTIONS, true);
  if (positionals.length < 1 || positionals.length > 2) throw new UsageError('expected an app name and an optional release id');
  const [app, release] = positionals;
  const client = await clientFor(values);
  const { id } = await client.call<{ id: string }>('POST', `/v1/apps/${encodeURIComponent(app)}/rollback`, release ? { release } : {});
  return follow(client, id, `rolling back ${app}${release ? ` to ${release}` : ' to the previous release'}`, values.json);
}

export async function reload(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, CLIENT_OPTIONS, true);
  if (positionals.length !== 1) throw new UsageError('expected one app name');
  const client = await clientFor(values);
  const { id } = await client.call<{ id: string }>('POST', `/v1/apps/${encodeURIComponent(positionals[0])}/reload`, {});
  return follow(client, id, `reloading ${positionals[0]}`, values.json);
}

/** Streams the deploy's NDJSON events and prints them; exit 0 only when it succeeded. */
async function follow(client: ControlClient, id: string, title: string, json: boolean): Promise<number> {
  const out = (s: string) => process.stdout.write(s + '\n');
  if (!json) out(`${title} (${id})`);
  const progress = new Progress(out);
  const started = Date.now();
  let end: DeployRecord | null = null;
  let failedEvent: DeployEvent | null = null;
  const stream = client.stream(
    'GET',
    `/v1/deploys/${encodeURIComponent(id)}?follow=1`,
    (line) => {
      if (!line) return;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        throw new BerthError(ErrorCodes.internal, `following deploy ${id}: the gateway sent a line that is not JSON (the deploy goes on; see berth status)`);
      }
      if (json) out(line);
      if (msg.type === 'end') end = msg.deploy;
      else if (msg.type === 'event') {
        const e = msg as DeployEvent;
        if (e.status === 'failed') failedEvent = e;
        if (!json) progress.event(e);
      }
    },
    { lost: (err) => new BerthError(ErrorCodes.unavailable, `lost the gateway while following ${id}: ${err.message} (the deploy goes on; see berth status)`) },
  );
  await stream.done.finally(() => progress.stop());
  const result = end as DeployRecord | null;
  if (!result) {
    process.stderr.write(`berth: the stream of ${id} ended early; the deploy goes on in the gateway (see berth status)\n`);
    return 1;
  }
  if (result.state === 'succeeded') {
    if (!json) out(`done: ${result.app} serves release ${result.releaseId} (${humanDuration(Date.now() - started)})`);
    return 0;
  }
  if (!json) {
    const fe = failedEvent as DeployEvent | null;
    // The gateway sends at most FAILED_LOG_LINES, merged by time across instances; older gateways sent more.
    const lines = (result.logTail?.length ? result.logTail : (fe?.lines ?? [])).slice(-FAILED_LOG_LINES);
    // A startup failure's message carries the log tail too; it is printed once, below.
    const error = lines.length ? firstLine(result.error ?? 'unknown error') : (result.error ?? 'unknown error');
    process.stderr.write(`failed at step ${result.failedStep ?? fe?.step ?? '?'}: ${error}\n`);
    if (lines.length) process.stderr.write(`last ${lines.length} log lines:\n${lines.map((l) => `  | ${l}`).join('\n')}\n`);
    // A step after the switch failing leaves the new release serving; one before it, the old.
    const afterSwitch = result.failedStep !== null && POST_SWITCH_STEPS.has(result.failedStep);
    if (afterSwitch) process.stderr.write(`${result.app} serves release ${result.releaseId}: the switch had happened\n`);
    else if (result.previousRelease) process.stderr.write(`${result.app} still serves release ${result.previousRelease}\n`);
  }
  return 1;
}

/** Steps that run once traffic has moved to the new release. */
const POST_SWITCH_STEPS = new Set(['current', 'drain', 'stop_old', 'flush', 'prune', 'record']);
const SPINNER = ['|', '/', '-', '\\'];

/**
 * Prints deploy steps: one line per finished step with its duration. A slow step that is running shows
 * a spinner with its elapsed time on a terminal, and a plain `...` line otherwise (logs, CI).
 */
class Progress {
  #out: (s: string) => void;
  #tty = process.stdout.isTTY === true;
  #timer: NodeJS.Timeout | null = null;

  constructor(out: (s: string) => void) {
    this.#out = out;
  }

  event(e: DeployEvent): void {
    const step = e.step.padEnd(13);
    if (e.status === 'started') {
      if (!SLOW_STEPS.has(e.step)) return;
      if (!this.#tty) {
        this.#out(`  ${step}...`);
        return;
      }
      this.stop();
      const since = Date.now();
      let frame = 0;
      const draw = () => process.stdout.write(`\r\x1b[2K  ${step}${SPINNER[frame++ % SPINNER.length]} ${humanDuration(Date.now() - since)}`);
      draw();
      this.#timer = setInterval(draw, 100);
      return;
    }
    this.stop();
    const mark = e.status === 'succeeded' ? 'ok' : e.status === 'skipped' ? 'skip' : 'FAIL';
    const dur = e.durationMs === null ? '' : humanDuration(e.durationMs);
    this.#out(`  ${step}${mark.padEnd(5)} ${dur.padStart(7)}  ${firstLine(e.message ?? '')}`.trimEnd());
  }

  /** Clears a running spinner's line. */
  stop(): void {
    if (!this.#timer) return;
    clearInterval(this.#timer);
    this.#timer = null;
    process.stdout.write('\r\x1b[2K');
  }
}

function firstLine(text: string): string {
  const i = text.indexOf('\n');
  return i === -1 ? text : text.slice(0, i);
}
