import { join } from 'node:path';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { readContained } from '../lib/contained-file.ts';
import { DEFAULT_CONCURRENCY, DEFAULT_INSTANCES, type AppConfig, type ProcessConfig } from '../config/schema.ts';

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
 * The process types an app runs for a release: its configured `processes`, or the release's Procfile.
 * For a Procfile app, every route target must be an http type of the Procfile, else the deploy fails.
 */
export async function resolveProcesses(app: AppConfig, releaseDir: string): Promise<Procfile> {
  if (app.processes) return { processes: app.processes, release: app.release };
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
  if (app.dbConnections !== null) {
    const pools = Object.values(procfile.processes).filter((p) => p.http);
    const demand = pools.reduce((sum, p) => sum + p.instances * p.concurrency, 0);
    if (demand > app.dbConnections) {
      const parts = pools.map((p) => `${p.name} ${p.instances}x${p.concurrency}`).join(' + ');
      throw new BerthError(ErrorCodes.release, `app ${app.name}: the Procfile's http pools need ${demand} connections (${parts}), more than the budget of ${app.dbConnections}`);
    }
  }
  return { processes: procfile.processes, release: app.release ?? procfile.release };
}
