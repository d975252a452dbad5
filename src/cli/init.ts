/**
 * `berth init [dir]`: writes `<dir>/berth.yaml` for the app in that directory, a commented config that
 * `berth check` accepts and `berth start` runs. It asks nothing (no prompts, on a terminal or not): what
 * it cannot tell, it says on stderr and in the file's comments.
 *
 * What it looks at, in this order of evidence (the first that fits decides the process commands):
 * 1. a `Procfile`: no `processes` key; berth reads the Procfile of each release (`web` gets the traffic);
 * 2. a `package.json`: `npm start` when it has `scripts.start`, else `node <main | index.js | server.js>`;
 *    a `build` that installs the dependencies (`npm ci --omit=dev` with a lock file) when it lists any;
 * 3. Python: a WSGI app (Flask, Django, Bottle, Falcon, a bare `application`) in `wsgi.py`, `app.py`,
 *    `main.py`, `server.py` or a Django project's `<project>/wsgi.py` runs under gunicorn; an ASGI app
 *    (FastAPI, Starlette, Quart, `asgi.py`) under uvicorn; a plain `__main__` script as `python3 <file>`;
 * 4. nothing: a `web` command to fill in ("CHANGE ME"); the file is still written, and the exit status is 1.
 * `static/` and `public/` directories become static routes (`/static`, `/public`) before `/ -> web`. The
 * health path is `/` unless the entry files name a better one (`/up`, `/health`, `/healthz`, ...).
 * Entry files that do not read `$PORT` (or listen on a fixed port) are warned about on stderr.
 *
 * The file is written through a temp file that is first loaded with the config loader (so what is
 * written always validates), then linked into place: an existing berth.yaml is never replaced without
 * `--force` (exit 2, naming it). Exit status: 0 written, 1 written but a command must be filled in, 2
 * bad arguments or an existing file.
 */
import { link, open, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { loadConfig } from '../config/load.ts';
import { APP_NAME_RE } from '../config/schema.ts';
import { ConfigError, formatProblems } from '../lib/errors.ts';
import { parse, UsageError } from './options.ts';
import { detect, ENV_NAME_RE, exists, healthPath, portWarnings, readEntries, shellWord, showPath, staticRoutes, virtualenvWarnings, type Detection, type StaticRoute } from './app-detection.ts';

export { CHANGE_ME } from './app-detection.ts';

export const INIT_USAGE = 'berth init [dir] [--name N] [--listen ADDR]... [--port-env VAR] [--force] [--json]';

const CONFIG_FILE = 'berth.yaml';
const DEFAULT_LISTEN = '127.0.0.1:8080';
/** What an undetected app's web command says, so `grep "CHANGE ME"` finds what to fill in. */
export async function init(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      name: { type: 'string' },
      listen: { type: 'string', multiple: true },
      'port-env': { type: 'string' },
      force: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
    true,
  );
  if (positionals.length > 1) throw new UsageError(`unexpected argument "${positionals[1]}" (one directory at most)`);
  const dir = resolve(positionals[0] ?? '.');
  const dirStat = await stat(dir).catch(() => null);
  if (dirStat === null) throw new UsageError(`${dir} does not exist`);
  if (!dirStat.isDirectory()) throw new UsageError(`${dir} is not a directory`);

  const name = values.name ?? appNameFrom(basename(dir));
  if (!APP_NAME_RE.test(name)) throw new UsageError(`--name must match ${APP_NAME_RE.source}, got "${name}"`);
  const portEnv = values['port-env'] ?? null;
  if (portEnv !== null && !ENV_NAME_RE.test(portEnv)) throw new UsageError(`--port-env expects an environment variable name, got "${portEnv}"`);
  if (portEnv === 'PORT') throw new UsageError('--port-env PORT is the default: leave it out');
  const listen = values.listen && values.listen.length > 0 ? values.listen : [DEFAULT_LISTEN];

  const file = join(dir, CONFIG_FILE);
  if (!values.force && (await exists(file))) return refuseOverwrite(file);

  const detection = await detect(dir, name, portEnv);
  if (portEnv !== null && detection.web !== null && detection.toFix === null) detection.web.command = `${portEnv}=$PORT ${detection.web.command}`;
  if (portEnv !== null && detection.kind === 'procfile') {
    throw new UsageError(`--port-env applies to a command berth.yaml holds; this app's commands are in its Procfile: write "web: ${portEnv}=$PORT <command>" there`);
  }
  const statics = await staticRoutes(dir);
  const sources = await readEntries(dir, detection.entryFiles);
  const health = healthPath(sources);
  if (detection.language !== null && detection.checkPort) {
    for (const [path, text] of sources) detection.warnings.push(...portWarnings(path, text, detection.language, portEnv));
  }
  detection.warnings.push(...(await virtualenvWarnings(dir)));

  const text = renderConfig({ name, listen, detection, statics, health });
  const written = await place(dir, file, text, values.force);
  if (written === 'exists') return refuseOverwrite(file);

  const shown = showPath(file);
  const configArg = resolve(process.cwd(), CONFIG_FILE) === file ? '' : ` --config ${shellWord(shown)}`;
  const next = [`berth check${configArg}`, `berth start${configArg}`];
  const routes = [...statics.map((s) => `${s.path} -> ${s.dir}/ (static)`), '/ -> web'];
  for (const w of detection.warnings) process.stderr.write(`berth init: warning: ${w}\n`);
  if (values.json) {
    process.stdout.write(
      JSON.stringify(
        {
          ok: detection.toFix === null,
          file,
          app: name,
          detected: detection.kind,
          summary: detection.summary,
          processes: detection.web === null ? null : { web: { command: detection.web.command, concurrency: detection.web.concurrency } },
          procfile: detection.kind === 'procfile',
          build: detection.build,
          routes: [...statics.map((s) => ({ path: s.path, static: s.dir })), { path: '/', to: 'web' }],
          health: { path: health.path },
          warnings: detection.warnings,
          toFix: detection.toFix,
          next,
        },
        null,
        2,
      ) + '\n',
    );
  } else {
    const lines = [`wrote ${shown} for app "${name}": ${detection.summary}`];
    lines.push(`  web:     ${detection.web === null ? 'from the Procfile' : detection.web.command}`);
    if (detection.build !== null) lines.push(`  build:   ${detection.build}`);
    lines.push(`  routes:  ${routes.join(', ')}`);
    lines.push(`  health:  ${health.path}`);
    lines.push('next steps:');
    if (detection.toFix !== null) lines.push(`  edit ${shown}: ${detection.toFix}`);
    lines.push(`  ${next[0]}`.padEnd(40) + '  validate it and list the routes');
    lines.push(`  ${next[1]}`.padEnd(40) + '  run the gateway; its first start deploys this directory');
    const url = frontDoorUrl(listen[0]);
    if (url !== null) lines.push(`  then open ${url}`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  if (detection.toFix !== null) {
    process.stderr.write(`berth init: ${detection.toFix} (in ${shown}), then run ${next[0]}\n`);
    return 1;
  }
  return 0;
}

function refuseOverwrite(file: string): number {
  process.stderr.write(`berth init: ${showPath(file)} already exists; not overwriting it (use --force to replace it)\n`);
  return 2;
}

/** A directory name as an app name: lower case, runs of other characters as "-"; "app" when nothing is left. */
export function appNameFrom(dirName: string): string {
  const name = dirName
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '-')
    .replace(/-{2,}/g, '-')
    .replace(/^[^a-z0-9]+/, '')
    .replace(/[-_]+$/, '');
  return APP_NAME_RE.test(name) ? name : 'app';
}

function renderConfig(o: { name: string; listen: string[]; detection: Detection; statics: StaticRoute[]; health: { path: string; from: string | null } }): string {
  const d = o.detection;
  const c = (s: string) => s.replace(/[\x00-\x1f\x7f]/g, '?');
  const q = (s: string) => JSON.stringify(s);
  const lines: string[] = [
    `# berth.yaml for "${o.name}", written by \`berth init\`: ${c(d.summary)}.`,
    '# Every key is described in docs/SPEC.md § "Config file" (in berth\'s repository); unknown keys are',
    '# errors. `berth check` validates this file; `berth start` runs the gateway with it.',
    '',
    '# Releases, berth.db (SQLite), logs and the control socket. Relative to this file; a state dir',
    '# inside the app\'s directory is never copied into a release (add .berth/ to .gitignore).',
    'state_dir: ./.berth',
    '',
    '# The front door: "host:port", "[v6]:port", "unix:/path", or { address: "0.0.0.0:443", tls: true }',
    '# (see SPEC § HTTPS). Loopback only for now: "0.0.0.0:80" serves every interface.',
    `listen: [${o.listen.map(q).join(', ')}]`,
    '',
    'apps:',
    `  ${o.name}:`,
    `    # hosts: ["${o.name}.example.com"]   # the Host names this app answers; missing or empty: every host`,
    '    # The deploy source: a directory (copied into each release), a .tar.gz or a git URL#ref. "." is',
    `    # this directory: the first \`berth start\` deploys it, \`berth deploy ${o.name}\` deploys it again.`,
    '    source: .',
  ];
  for (const n of d.buildNotes) lines.push(`    # ${c(n)}`);
  if (d.build !== null) lines.push(`    build: ${q(d.build)}`);
  if (Object.keys(d.env).length > 0) {
    lines.push('    # The app\'s environment (berth passes only PATH, LANG, TZ... of its own; see SPEC § Environment).');
    lines.push(`    env: { ${Object.entries(d.env).map(([k, v]) => `${k}: ${q(v)}`).join(', ')} }`);
  }
  if (d.web === null) {
    for (const n of d.procfileNotes) lines.push(`    # ${c(n)}`);
  } else {
    for (const n of d.web.notes) lines.push(`    # ${c(n)}`);
    lines.push('    processes:');
    lines.push('      web:');
    lines.push(`        command: ${q(d.web.command)}   # run through sh -c, so $PORT expands`);
    lines.push('        instances: 1      # more share the traffic; a deploy starts new ones before it stops the old');
    lines.push(`        concurrency: ${d.web.concurrency}     # requests one instance is sent at once; more wait in berth's queue`);
  }
  lines.push('    # port: each instance listens on 127.0.0.1:$PORT; socket: on the unix socket $BERTH_SOCKET.');
  lines.push('    listen: port');
  lines.push('    # Longest path prefix wins. Static routes are served by berth from the release each request is');
  lines.push('    # pinned to; cache: "immutable" (a year) or a Cache-Control value such as "public, max-age=300".');
  lines.push('    routes:');
  for (const s of o.statics) lines.push(`      - { path: ${s.path}, static: ${s.dir}, cache: null }`);
  lines.push('      - { path: /, to: web }');
  lines.push('    # Probed on each instance directly, never queued behind app traffic; healthy means a 2xx answer');
  lines.push(
    o.health.from !== null
      ? `    # (${o.health.path} is named in ${c(o.health.from)}).`
      : '    # (a redirect or 404 is a failure). "/" until the app has a cheap health path, such as /up.',
  );
  lines.push(`    health: { path: ${o.health.path}, interval: 2s }`);
  return lines.join('\n') + '\n';
}

/**
 * Writes the config through a temp file in `dir`: loaded first (what is written validates, whatever
 * --listen said), then linked into place (never replacing a file without `force`) or renamed over it.
 */
async function place(dir: string, file: string, text: string, force: boolean): Promise<'written' | 'exists'> {
  const tmp = join(dir, `.${CONFIG_FILE}.${process.pid}.tmp`);
  await writeFile(tmp, text, { flag: 'wx', mode: 0o644 });
  try {
    try {
      await loadConfig({ configPath: tmp, cwd: dir, environ: {} });
    } catch (err) {
      if (err instanceof ConfigError) throw new UsageError(`the config would not load:\n${formatProblems(err.problems)}`);
      throw err;
    }
    if (force) {
      await rename(tmp, file);
      return 'written';
    }
    try {
      await link(tmp, file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return 'exists';
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
      // No hard links on this file system: check, then rename.
      if (await exists(file)) return 'exists';
      await rename(tmp, file);
    }
    return 'written';
  } finally {
    await rm(tmp, { force: true });
  }
}

function frontDoorUrl(listen: string): string | null {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d+)$/.exec(listen);
  if (!m || m[2] === '0') return null;
  const host = m[1] === '0.0.0.0' ? '127.0.0.1' : m[1] === '[::]' ? '[::1]' : m[1];
  return `http://${host}:${m[2]}/`;
}
