/**
 * What `berth init` can tell of an app from its directory (init.ts): its web command from a Procfile,
 * a package.json or a Python WSGI/ASGI entry point, its build, its static folders, its health path, and
 * what to warn about (a fixed port, a missing gunicorn). Reads only: at most the first 512 KiB of a file.
 */
import { lstat, open, readdir, stat } from 'node:fs/promises';
import { basename, delimiter, isAbsolute, join, relative, resolve } from 'node:path';
import { parseProcfile } from '../deploy/procfile.ts';
import { errorMessage } from '../lib/errors.ts';

export const CHANGE_ME = 'CHANGE ME: a command that listens on 127.0.0.1:$PORT';
/** Requests an instance is sent at once; gunicorn gets as many threads. */
const CONCURRENCY = 8;
/** Source files are read at most this far: enough to find an app object, a port or a health path. */
const READ_LIMIT = 512 * 1024;
/** Health paths apps commonly serve, best first; the first an entry file names is probed. */
const HEALTH_PATHS = ['/up', '/health', '/healthz', '/healthcheck', '/_health', '/livez', '/ping'];
export const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

interface WebProcess {
  command: string;
  /** Written as `concurrency:` (and explained) when set. */
  concurrency: number;
  /** Comment lines written above `processes:`. */
  notes: string[];
}

export interface Detection {
  kind: 'procfile' | 'node' | 'python' | 'none';
  /** What was found, for humans: `Node.js (package.json, npm start)`. */
  summary: string;
  /** null: the Procfile gives the process types. */
  web: WebProcess | null;
  /** Comment lines written in place of `processes:` for a Procfile app. */
  procfileNotes: string[];
  build: string | null;
  buildNotes: string[];
  env: Record<string, string>;
  /** Files (relative to the app dir) read for a health path and for $PORT. */
  entryFiles: string[];
  /** False when the web command itself gives the port ($PORT on a gunicorn command line). */
  checkPort: boolean;
  language: 'node' | 'python' | null;
  warnings: string[];
  /** What the user must do before the config can run; null when nothing. Makes the exit status 1. */
  toFix: string | null;
}

export interface StaticRoute {
  path: string;
  dir: string;
}

// ---- detection --------------------------------------------------------------------------------

function emptyDetection(kind: Detection['kind'], summary: string): Detection {
  return { kind, summary, web: null, procfileNotes: [], build: null, buildNotes: [], env: {}, entryFiles: [], checkPort: true, language: null, warnings: [], toFix: null };
}

export async function detect(dir: string, name: string, portEnv: string | null): Promise<Detection> {
  const warnings: string[] = [];
  const procfile = await readText(join(dir, 'Procfile'));
  if (procfile !== null) return fromProcfile(dir, procfile);
  const pkg = await readText(join(dir, 'package.json'));
  if (pkg !== null) {
    const node = await fromPackageJson(dir, pkg, warnings);
    if (node !== null) return withWarnings(node, warnings);
  }
  const python = await fromPython(dir, portEnv);
  if (python !== null) return withWarnings(python, warnings);

  const none = emptyDetection('none', 'no Procfile, package.json or Python entry point found');
  none.web = {
    command: CHANGE_ME,
    concurrency: CONCURRENCY,
    notes: [
      'CHANGE ME: berth found no Procfile, package.json or Python app here. Put the command that',
      'starts the app on 127.0.0.1:$PORT below (commands run through sh -c, so $PORT expands), or',
      'delete `processes:` and add a Procfile with a `web:` line.',
    ],
  };
  none.toFix = `no app detected in ${showPath(dir)}: set apps.${name}.processes.web.command (a command that listens on 127.0.0.1:$PORT) where it says "CHANGE ME"`;
  return withWarnings(none, warnings);
}

function withWarnings(d: Detection, warnings: string[]): Detection {
  d.warnings.unshift(...warnings);
  return d;
}

async function fromProcfile(dir: string, text: string): Promise<Detection> {
  const d = emptyDetection('procfile', 'Procfile');
  d.procfileNotes = [
    'No `processes` key: berth reads the Procfile of each release (`<type>: <command>` lines; `web` gets',
    'the HTTP traffic and must listen on 127.0.0.1:$PORT; a `release:` line is the release command).',
    'To set instances or concurrency, list the types under `processes:` instead (then the Procfile is',
    'not read), or scale them here: scale: { web: 2 }',
  ];
  let parsed;
  try {
    parsed = parseProcfile(text);
  } catch (err) {
    d.toFix = `fix the Procfile, which a deploy would refuse: ${errorMessage(err)}`;
    return d;
  }
  const types = Object.keys(parsed.processes);
  d.summary = `Procfile (${types.join(', ') || 'no process types'})`;
  const web = parsed.processes.web;
  if (web === undefined) {
    d.toFix = 'the Procfile has no `web` type, which the route `/ -> web` needs: add a line "web: <a command that listens on 127.0.0.1:$PORT>"';
    return d;
  }
  if (/\$\{?PORT\b/.test(web.command)) d.checkPort = false;
  const files = await filesOfCommand(dir, web.command);
  d.entryFiles = files;
  d.language = languageOf(files);
  return d;
}

async function fromPackageJson(dir: string, text: string, warnings: string[]): Promise<Detection | null> {
  let pkg: unknown;
  try {
    pkg = JSON.parse(text);
  } catch (err) {
    warnings.push(`package.json does not parse (${errorMessage(err)}): not used`);
    return null;
  }
  if (!isObject(pkg)) {
    warnings.push('package.json is not a JSON object: not used');
    return null;
  }
  const scripts = isObject(pkg.scripts) ? pkg.scripts : {};
  const start = typeof scripts.start === 'string' && scripts.start.trim() !== '' ? scripts.start : null;
  const main = typeof pkg.main === 'string' && pkg.main !== '' ? pkg.main : null;

  const d = emptyDetection('node', '');
  d.language = 'node';
  d.env = { NODE_ENV: 'production' };
  let command: string;
  if (start !== null) {
    command = 'npm start';
    d.summary = `Node.js (package.json, npm start: ${start})`;
    d.entryFiles = await filesOfCommand(dir, start);
    if (/\$\{?PORT\b/.test(start)) d.checkPort = false;
  } else {
    let entry: string | null = null;
    for (const candidate of [main, 'index.js', 'server.js', 'app.js', 'index.mjs', 'server.mjs'].filter((c): c is string => c !== null)) {
      if (await isFileInside(dir, candidate)) {
        entry = candidate.replace(/^\.\//, '');
        break;
      }
    }
    if (entry === null) {
      warnings.push(`package.json has no scripts.start and none of ${[main, 'index.js', 'server.js'].filter(Boolean).join(', ')} exists: add a start script`);
      return null;
    }
    command = `node ${shellWord(entry)}`;
    d.summary = `Node.js (package.json, ${entry})`;
    d.entryFiles = [entry];
  }
  if (main !== null && !d.entryFiles.includes(main) && (await isFileInside(dir, main))) d.entryFiles.push(main.replace(/^\.\//, ''));
  d.web = {
    command,
    concurrency: CONCURRENCY,
    notes: [
      `The app must listen on 127.0.0.1:$PORT (process.env.PORT): berth gives each instance a port of its`,
      'own and sends it traffic only once it answers the health check.',
    ],
  };

  // The build: install the dependencies in each new release (never shared between releases).
  const deps = isObject(pkg.dependencies) ? Object.keys(pkg.dependencies).length : 0;
  const devDeps = isObject(pkg.devDependencies) ? Object.keys(pkg.devDependencies).length : 0;
  const buildScript = typeof scripts.build === 'string' && scripts.build.trim() !== '';
  const pm = await packageManager(dir);
  if (buildScript) {
    d.build = deps + devDeps > 0 ? `${pm.all} && ${pm.run} build && ${pm.prune}` : `${pm.run} build`;
    d.buildNotes = [`Runs in each new release before it starts: ${deps + devDeps > 0 ? 'installs every dependency, runs scripts.build, then drops the devDependencies' : 'runs scripts.build'}.`];
  } else if (deps > 0) {
    d.build = `${pm.all} ${pm.prodFlag}`;
    d.buildNotes = [`Runs in each new release before it starts: installs the dependencies${pm.lock === null ? ' (no lock file: npm install; commit a package-lock.json and use npm ci for repeatable releases)' : ` from ${pm.lock}`}.`];
  } else {
    d.buildNotes = ['No build: package.json lists no dependencies. A command here would run in each new release', 'before it starts, e.g. build: "npm ci --omit=dev".'];
  }
  if (deps > 0 && !buildScript && pm.lock === null) warnings.push('package.json lists dependencies but there is no lock file: the build runs `npm install --omit=dev`, so each release may get other versions');
  return d;
}

async function packageManager(dir: string): Promise<{ all: string; prodFlag: string; run: string; prune: string; lock: string | null }> {
  if (await exists(join(dir, 'pnpm-lock.yaml'))) return { all: 'pnpm install --frozen-lockfile', prodFlag: '--prod', run: 'pnpm run', prune: 'pnpm prune --prod', lock: 'pnpm-lock.yaml' };
  if ((await exists(join(dir, 'yarn.lock'))) && !(await exists(join(dir, 'package-lock.json')))) {
    return { all: 'yarn install --frozen-lockfile', prodFlag: '--production', run: 'yarn run', prune: 'yarn install --frozen-lockfile --production', lock: 'yarn.lock' };
  }
  for (const lock of ['package-lock.json', 'npm-shrinkwrap.json']) {
    if (await exists(join(dir, lock))) return { all: 'npm ci', prodFlag: '--omit=dev', run: 'npm run', prune: 'npm prune --omit=dev', lock };
  }
  return { all: 'npm install', prodFlag: '--omit=dev', run: 'npm run', prune: 'npm prune --omit=dev', lock: null };
}

const ASGI_RE = /\b(?:FastAPI|Starlette|Quart|Litestar)\s*\(|\bget_asgi_application\s*\(/;
const WSGI_RE = /\b(?:Flask|Bottle)\s*\(|\bget_wsgi_application\s*\(|\bfalcon\.(?:App|API)\s*\(|\bmake_wsgi_app\s*\(|^def\s+application\s*\(\s*environ\b/m;
const APP_ASSIGN_RE = /^([A-Za-z_]\w*)\s*(?::[^=\n]+)?=\s*(?:[\w.]+\.)?(?:Flask|FastAPI|Starlette|Quart|Litestar|Bottle|App|API|get_wsgi_application|get_asgi_application|make_wsgi_app)\s*\(/m;
const MAIN_RE = /^if\s+__name__\s*==\s*['"]__main__['"]\s*:/m;

/** The app object of a Python file: its kind and variable (`create_app()` for a factory), or null. */
function pythonApp(file: string, text: string): { kind: 'wsgi' | 'asgi'; variable: string; factory: boolean } | null {
  const asgi = ASGI_RE.test(text) || (basename(file) === 'asgi.py' && !WSGI_RE.test(text));
  const wsgi = !asgi && (WSGI_RE.test(text) || basename(file) === 'wsgi.py');
  if (!asgi && !wsgi) return null;
  const kind = asgi ? 'asgi' : 'wsgi';
  const assigned = APP_ASSIGN_RE.exec(text)?.[1];
  if (assigned) return { kind, variable: assigned, factory: false };
  if (/^application\s*=|^def\s+application\s*\(/m.test(text)) return { kind, variable: 'application', factory: false };
  if (/^app\s*=/m.test(text)) return { kind, variable: 'app', factory: false };
  if (/^def\s+create_app\s*\(/m.test(text)) return { kind, variable: 'create_app', factory: true };
  return null;
}

async function fromPython(dir: string, portEnv: string | null): Promise<Detection | null> {
  const candidates: string[] = [];
  // A Django project: manage.py beside <project>/wsgi.py (or asgi.py).
  if (await isFileInside(dir, 'manage.py')) {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (!e.isDirectory() || !/^[A-Za-z_]\w*$/.test(e.name)) continue;
      for (const f of ['wsgi.py', 'asgi.py']) if (await isFileInside(dir, `${e.name}/${f}`)) candidates.push(`${e.name}/${f}`);
    }
  }
  candidates.push('wsgi.py', 'asgi.py', 'app.py', 'main.py', 'server.py');
  let script: string | null = null;
  for (const candidate of candidates) {
    if (!(await isFileInside(dir, candidate))) continue;
    const text = await readText(join(dir, candidate));
    if (text === null) continue;
    const found = pythonApp(candidate, text);
    if (found === null) {
      if (script === null && MAIN_RE.test(text)) script = candidate;
      continue;
    }
    const module = candidate.replace(/\.py$/, '').replaceAll('/', '.');
    const d = emptyDetection('python', '');
    d.language = 'python';
    d.env = { PYTHONUNBUFFERED: '1' };
    d.entryFiles = [candidate];
    d.checkPort = false; // the port is on the server's command line
    const server = found.kind === 'wsgi' ? 'gunicorn' : 'uvicorn';
    if (found.kind === 'wsgi') {
      const target = found.factory ? `${module}:${found.variable}()` : `${module}:${found.variable}`;
      d.web = {
        command: `gunicorn --bind 127.0.0.1:$PORT --threads ${CONCURRENCY} ${shellWord(target)}`,
        concurrency: CONCURRENCY,
        notes: [
          `A WSGI app (${module}:${found.variable}) under gunicorn, one process with ${CONCURRENCY} threads: keep --threads`,
          'equal to concurrency, so berth never sends an instance more requests than it has threads.',
          'gunicorn must be installed where berth\'s PATH finds it (pip install gunicorn).',
        ],
      };
    } else {
      const target = `${module}:${found.variable}`;
      d.web = {
        command: `uvicorn ${shellWord(target)}${found.factory ? ' --factory' : ''} --host 127.0.0.1 --port $PORT`,
        concurrency: CONCURRENCY,
        notes: [`An ASGI app (${module}:${found.variable}) under uvicorn.`, 'uvicorn must be installed where berth\'s PATH finds it (pip install uvicorn).'],
      };
    }
    d.summary = `Python ${found.kind.toUpperCase()} app (${candidate}, ${server})`;
    d.buildNotes = pythonBuildNotes(await exists(join(dir, 'requirements.txt')));
    if (!(await onPath(server)) && !(await listsRequirement(dir, server))) {
      d.warnings.push(`${server} is not on PATH and no requirements file names it: install it (pip install ${server}) where berth's PATH finds it, or change the command`);
    }
    return d;
  }
  if (script === null) return null;
  const d = emptyDetection('python', `Python script (${script})`);
  d.language = 'python';
  d.env = { PYTHONUNBUFFERED: '1' };
  d.entryFiles = [script];
  d.web = {
    command: `python3 ${shellWord(script)}`,
    concurrency: CONCURRENCY,
    notes: [`The app must listen on 127.0.0.1:$PORT (os.environ["${portEnv ?? 'PORT'}"]): berth gives each instance a port of its own.`],
  };
  d.buildNotes = pythonBuildNotes(await exists(join(dir, 'requirements.txt')));
  return d;
}

function pythonBuildNotes(requirements: boolean): string[] {
  return [
    `No build: berth installs no Python packages${requirements ? ' (requirements.txt is not installed)' : ''}. Install them where`,
    'the command finds them (a virtualenv outside this directory, its bin/ on berth\'s PATH), or into',
    'each release: build: "pip install -r requirements.txt --target .deps" with env PYTHONPATH: .deps',
  ];
}

async function listsRequirement(dir: string, pkg: string): Promise<boolean> {
  const re = new RegExp(`(^|[\\s"'\\[,])${pkg}\\b`, 'im');
  for (const f of ['requirements.txt', 'pyproject.toml', 'Pipfile', 'setup.py', 'setup.cfg']) {
    const text = await readText(join(dir, f));
    if (text !== null && re.test(text)) return true;
  }
  return false;
}

async function onPath(command: string): Promise<boolean> {
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    if (d === '') continue;
    const st = await stat(join(d, command)).catch(() => null);
    if (st !== null && st.isFile() && (st.mode & 0o111) !== 0) return true;
  }
  return false;
}

/** A virtualenv in the app dir links outside it (bin/python), and such a link fails the deploy. */
export async function virtualenvWarnings(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const v of ['.venv', 'venv', 'env']) {
    if (await exists(join(dir, v, 'pyvenv.cfg'))) {
      out.push(`${v}/ is a virtualenv inside the app directory: its links lead outside the release, which fails the deploy; move it out of the directory (and put its bin/ on berth's PATH)`);
    }
  }
  return out;
}

/** Files a command names that exist in the app dir: scripts (`node server.js`), Python modules (`app:app`), npm scripts. */
async function filesOfCommand(dir: string, command: string, depth = 0): Promise<string[]> {
  const out: string[] = [];
  const words = command.split(/\s+/).map((w) => w.replace(/^['"]|['"]$/g, '')).filter((w) => w !== '');
  for (const word of words) {
    if (/\.(?:m?js|cjs|m?ts|py)$/.test(word) && (await isFileInside(dir, word))) out.push(word.replace(/^\.\//, ''));
    const module = /^([A-Za-z_][\w.]*):[A-Za-z_]\w*(?:\(\))?$/.exec(word)?.[1];
    if (module) {
      const path = `${module.replaceAll('.', '/')}.py`;
      if (await isFileInside(dir, path)) out.push(path);
    }
  }
  // `npm start` / `npm run x` in a Procfile or a script: follow into package.json once.
  const npm = /\bnpm\s+(?:run(?:-script)?\s+)?(start|[\w:-]+)/.exec(command);
  if (npm && depth === 0) {
    const pkg = await readText(join(dir, 'package.json'));
    try {
      const scripts = pkg === null ? null : (JSON.parse(pkg) as { scripts?: Record<string, unknown> }).scripts;
      const script = scripts?.[npm[1]];
      if (typeof script === 'string') out.push(...(await filesOfCommand(dir, script, depth + 1)));
    } catch {
      // Not JSON: no files from it.
    }
  }
  return [...new Set(out)];
}

function languageOf(files: string[]): 'node' | 'python' | null {
  if (files.some((f) => f.endsWith('.py'))) return 'python';
  if (files.some((f) => /\.(?:m?js|cjs|m?ts)$/.test(f))) return 'node';
  return null;
}

export async function readEntries(dir: string, files: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const f of files) {
    const text = await readText(join(dir, f));
    if (text !== null) out.set(f, text);
  }
  return out;
}

/** The best health path the entry files name as a string literal, else `/`. */
export function healthPath(sources: Map<string, string>): { path: string; from: string | null } {
  for (const path of HEALTH_PATHS) {
    const re = new RegExp(`['"\`](?:(?:GET|HEAD) )?${path.replace('/', '\\/')}['"\`]`);
    for (const [file, text] of sources) if (re.test(text)) return { path, from: file };
  }
  return { path: '/', from: null };
}

/** Warnings for an entry file that does not read its port from the environment berth sets. */
export function portWarnings(file: string, text: string, language: 'node' | 'python', portEnv: string | null): string[] {
  const want = portEnv ?? 'PORT';
  const names = new Set<string>();
  const envRe = language === 'node'
    ? /\benv(?:\.([A-Za-z_]\w*)|\[\s*['"]([A-Za-z_]\w*)['"]\s*\])|\{([^}]*)\}\s*=\s*(?:process\.)?env\b/g
    : /\b(?:environ(?:\.get)?\s*[([]\s*|getenv\s*\(\s*)['"]([A-Za-z_]\w*)['"]/g;
  for (const m of text.matchAll(envRe)) {
    if (m[3] !== undefined) for (const n of m[3].split(',')) names.add(n.split(/[:=]/)[0].trim());
    else names.add(m[1] ?? m[2]);
  }
  if (names.has(want)) return [];
  const runtimeRead = language === 'node' ? `process.env.${want}` : `os.environ["${want}"]`;
  const other = [...names].filter((n) => /PORT/.test(n) && n !== want);
  if (other.length > 0 && portEnv === null) {
    return [`${file} reads its port from $${other[0]}, not $PORT: run berth init --port-env ${other[0]} --force, or make it read ${runtimeRead}`];
  }
  const fixed = language === 'node' ? /\.listen\(\s*(\d{2,5})\b/.exec(text) : /\bport\s*=\s*(\d{2,5})\b/.exec(text);
  if (fixed) return [`${file} listens on the fixed port ${fixed[1]}: berth gives each instance its own port in $${want}, so it must listen on ${runtimeRead}`];
  return [`${file} does not seem to read ${runtimeRead}: the app must listen on 127.0.0.1:$${want}, the port berth gives each instance`];
}

export async function staticRoutes(dir: string): Promise<StaticRoute[]> {
  const out: StaticRoute[] = [];
  for (const d of ['static', 'public']) {
    const st = await lstat(join(dir, d)).catch(() => null);
    if (st !== null && st.isDirectory()) out.push({ path: `/${d}`, dir: d });
  }
  return out;
}

// ---- the file ---------------------------------------------------------------------------------

// ---- helpers ----------------------------------------------------------------------------------

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

export async function exists(path: string): Promise<boolean> {
  return (await lstat(path).catch(() => null)) !== null;
}

/** A relative path that stays inside `dir` and names a regular file there. */
async function isFileInside(dir: string, path: string): Promise<boolean> {
  if (isAbsolute(path)) return false;
  const full = resolve(dir, path);
  const rel = relative(dir, full);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) return false;
  const st = await stat(full).catch(() => null);
  return st !== null && st.isFile();
}

/** The first READ_LIMIT bytes of a regular file as text, or null. */
async function readText(path: string): Promise<string | null> {
  const handle = await open(path, 'r').catch(() => null);
  if (handle === null) return null;
  try {
    if (!(await handle.stat()).isFile()) return null;
    const buf = Buffer.alloc(READ_LIMIT);
    const { bytesRead } = await handle.read(buf, 0, READ_LIMIT, 0);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await handle.close();
  }
}

/** A word for sh: as it is when plain, else single-quoted. */
export function shellWord(word: string): string {
  return /^[\w./:@%+=,-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

/** A path relative to the working directory when it is inside it, else absolute. */
export function showPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}
