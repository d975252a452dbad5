import { join } from 'node:path';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { readContained } from '../lib/contained-file.ts';
import { DEFAULT_CONCURRENCY, DEFAULT_INSTANCES, type AppConfig, type ProcessConfig } from '../config/schema.ts';
import { budgetProblem, withScale, type ScaleCounts } from './scale.ts';

/** The largest Procfile read. */
const PROCFILE_MAX_BYTES = 1024 * 1024;

/** What a Procfile declares: process types, plus the `release:` line, which is the release command. */
export interface Procfile {
  processes: Record<string, ProcessConfig>;
  release: string | null;
}

const LINE_RE = /^([A-Za-z0-9_-]+):\s*(.*)$/;

/**
 * Parses Procfile text: `<type>: <command>` per line; blank lines and `#` comments are skipped.
 * `web` is the http type; `release` is the release command, not a process. Instances default to 1 and
 * `scale` overrides them. Throws BERTH_E_RELEASE naming the line of the first bad line.
 */
export function parseProcfile(text: string, scale: Record<string, number> = {}, file = 'Procfile'): Procfile {
  const processes: Record<string, ProcessConfig> = {};
  let release: string | null = null;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = LINE_RE.exec(line);
    if (!m) throw new BerthError(ErrorCodes.release, `${file}:${i + 1}: expected "<type>: <command>", got "${line}"`);
    const [, name, command] = m;
    if (command.trim() === '') throw new BerthError(ErrorCodes.release, `${file}:${i + 1}: process type "${name}" has no command`);
    if (name === 'release') {
      release = command.trim();
      continue;
    }
    if (processes[name]) throw new BerthError(ErrorCodes.release, `${file}:${i + 1}: process type "${name}" is declared twice`);
    const http = name === 'web';
    processes[name] = {
      name,
      command: command.trim(),
      instances: scale[name] ?? DEFAULT_INSTANCES,
      concurrency: http ? DEFAULT_CONCURRENCY : 1,
      env: {},
      http,
      heartbeatTimeoutMs: null,
    };
  }
  for (const name of Object.keys(scale)) {
    if (!processes[name]) throw new BerthError(ErrorCodes.release, `${file}: scale names process type "${name}", which the Procfile does not declare`);
  }
  return { processes, release };
}

/**
 * The process types an app runs for a release: its configured `processes`, or the release's Procfile,
 * with the instance counts `berth scale` set (`scale`, from the store) over them. For a Procfile app,
 * every route target must be an http type of the Procfile, else the deploy fails; and the http pools must
 * fit `db_connections` (BERTH_E_RELEASE naming the demand, the budget, and the overrides that make it).
 */
export async function resolveProcesses(app: AppConfig, releaseDir: string, scale: ScaleCounts = {}): Promise<Procfile> {
  const declared = app.processes ? { processes: app.processes, release: app.release } : await readProcfile(app, releaseDir);
  const processes = withScale(declared.processes, scale);
  const problem = budgetProblem(app, processes);
  if (problem !== null) {
    const scaled = Object.keys(scale).filter((t) => Object.hasOwn(declared.processes, t) && declared.processes[t].instances !== scale[t]);
    const why = scaled.length === 0 ? (app.processes ? '' : " (the Procfile's counts)") : ` (set with berth scale: ${scaled.map((t) => `${t}=${scale[t]}`).join(', ')}; \`berth scale ${app.name} ${scaled.map((t) => `${t}=config`).join(' ')}\` goes back to the config's counts)`;
    throw new BerthError(ErrorCodes.release, `app ${app.name}: ${problem}${why}`);
  }
  return { processes, release: declared.release };
}

/** A Procfile app's process types and release command, from the release's Procfile. */
async function readProcfile(app: AppConfig, releaseDir: string): Promise<Procfile> {
  const file = join(releaseDir, 'Procfile');
  // Read only when it really lies inside the release: a Procfile symlinked elsewhere counts as missing,
  // and so does one too large to be a Procfile (the release is the app's; the gateway's memory is not).
  const body = await readContained(file, releaseDir, PROCFILE_MAX_BYTES);
  if (body === null) throw new BerthError(ErrorCodes.release, `app ${app.name} has no processes in config and its release has no Procfile (a regular file inside the release, at most 1 MiB)`);
  const text = body.toString('utf8');
  const procfile = parseProcfile(text, app.scale);
  for (const route of app.routes) {
    if (route.to === null) continue;
    const target = procfile.processes[route.to];
    if (!target) throw new BerthError(ErrorCodes.release, `route ${route.path} of app ${app.name} points at process type "${route.to}", which the Procfile does not declare`);
    if (!target.http) {
      target.http = true;
      target.concurrency = DEFAULT_CONCURRENCY;
    }
  }
  return { processes: procfile.processes, release: app.release ?? procfile.release };
}
