/**
 * Tasks on the control API: one-off runs that stream their output (`POST /v1/apps/:app/run`), the
 * schedule entries with their next and last run (`GET /v1/apps/:app/tasks`), and the recorded runs.
 */
import { PROCESS_NAME_RE } from '../config/schema.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { Control } from './control.ts';
import { describeOutcome } from '../scheduler/scheduler.ts';
import type { TaskRunState, TaskTrigger } from '../store/store.ts';
import type { RouteTable } from './request.ts';

const TRIGGERS: ReadonlySet<string> = new Set<TaskTrigger>(['schedule', 'manual', 'cleanup']);
const STATES: ReadonlySet<string> = new Set<TaskRunState>(['running', 'succeeded', 'failed', 'skipped', 'timeout', 'interrupted']);

/** What `POST /v1/apps/:app/run` accepts: `{command: string[] | string}` or `{process: string}`. */
export function parseRunBody(body: unknown): { command?: string | string[]; process?: string } {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BerthError(ErrorCodes.badRequest, 'request body must be a JSON object');
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) {
    if (key !== 'command' && key !== 'process') throw new BerthError(ErrorCodes.badRequest, `unknown key "${key}": expected "command" or "process"`);
  }
  const { command, process } = b;
  if ((command === undefined) === (process === undefined)) throw new BerthError(ErrorCodes.badRequest, 'give exactly one of "command" (a list of words or a shell command line) and "process" (a process type)');
  if (process !== undefined) {
    if (typeof process !== 'string' || !PROCESS_NAME_RE.test(process)) throw new BerthError(ErrorCodes.badRequest, `"process" must be a process type name matching ${PROCESS_NAME_RE.source}`);
    return { process };
  }
  if (typeof command === 'string') {
    if (command.trim() === '') throw new BerthError(ErrorCodes.badRequest, '"command" must not be empty');
    return { command };
  }
  if (!Array.isArray(command) || command.length === 0 || !command.every((w) => typeof w === 'string') || command[0] === '') {
    throw new BerthError(ErrorCodes.badRequest, '"command" must be a non-empty list of strings (the program first) or a shell command line');
  }
  return { command: command as string[] };
}

function intParam(url: URL, key: string, fallback: number, max: number): number {
  const raw = url.searchParams.get(key);
  if (raw === null) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new BerthError(ErrorCodes.badRequest, `"${key}" must be an integer from 1 to ${max}, got "${raw}"`);
  return n;
}

/** Registers the task endpoints. */
export function registerTaskRoutes(routes: RouteTable, gateway: Control): void {
  /**
   * A one-off run in the app's active release. NDJSON: `{type:"start",id,release,command}`, then
   * `{type:"out"|"err",line}` as output arrives, then `{type:"exit",code,state,id,error}`. A client that
   * goes away kills the run's process group.
   */
  routes.add(
    'POST',
    '/v1/apps/:app/run',
    async (p, _url, body, _req, res, ctx) => {
      const spec = parseRunBody(body);
      let open = true;
      const send = (msg: unknown) => {
        if (open) res.write(JSON.stringify(msg) + '\n');
      };
      const run = gateway.scheduler.runOnce({ app: p.app, ...spec, user: ctx.user, onLine: (type, line) => send({ type, line }) });
      // Nothing of the run is out yet: it records itself before it spawns.
      res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store', 'x-berth-task-run': run.id });
      send({ type: 'start', id: run.id, release: run.releaseId, command: run.command });
      const gone = () => {
        if (res.writableFinished) return;
        open = false;
        run.cancel('failed', 'cancelled: the client went away');
      };
      res.once('close', gone);
      const record = await run.done;
      res.off('close', gone);
      if (open) res.end(JSON.stringify({ type: 'exit', code: record.exitCode, state: record.state, id: record.id, error: record.error }) + '\n');
      const outcome = record.state === 'succeeded' ? ('ok' as const) : ('failed' as const);
      return { status: 200, body: null, audit: { target: run.id, settle: Promise.resolve({ outcome, detail: describeOutcome(record) }) } };
    },
    { action: 'run' },
  );

  routes.add('GET', '/v1/apps/:app/tasks', async (p) => {
    const scheduler = gateway.scheduler;
    return { status: 200, body: { app: p.app, firstRunAt: scheduler.firstRunAt, tasks: await scheduler.tasks(p.app) } };
  });

  routes.add('GET', '/v1/apps/:app/task-runs', async (p, url) => {
    if (!gateway.taskTarget(p.app)) throw new BerthError(ErrorCodes.notFound, `no app named "${p.app}"`);
    const task = url.searchParams.get('task') ?? undefined;
    const trigger = url.searchParams.get('trigger') ?? undefined;
    if (trigger !== undefined && !TRIGGERS.has(trigger)) throw new BerthError(ErrorCodes.badRequest, `"trigger" must be one of ${[...TRIGGERS].join(', ')}, got "${trigger}"`);
    const state = url.searchParams.get('state') ?? undefined;
    if (state !== undefined && !STATES.has(state)) throw new BerthError(ErrorCodes.badRequest, `"state" must be one of ${[...STATES].join(', ')}, got "${state}"`);
    const limit = intParam(url, 'limit', 50, 1000);
    const runs = await gateway.scheduler.runs({ app: p.app, task, trigger: trigger as TaskTrigger | undefined, states: state === undefined ? undefined : [state as TaskRunState], limit });
    return { status: 200, body: { runs } };
  });

  routes.add('GET', '/v1/apps/:app/task-runs/:id', async (p) => {
    const run = await gateway.scheduler.get(p.id);
    if (!run || run.app !== p.app) throw new BerthError(ErrorCodes.notFound, `no task run "${p.id}" of app "${p.app}"`);
    return { status: 200, body: run };
  });
}
