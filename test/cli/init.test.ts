/**
 * `berth init` (issue 16 item 3), end to end: the CLI as a child process writes berth.yaml for real app
 * directories (copies of the examples, a Flask-or-WSGI app and a node:http app written here), the file
 * loads with the config loader and passes `berth check`, and `berth start` on it serves the app through
 * the gateway. Also: no overwrite without --force, --force rewrites, an empty directory exits 1 with a
 * "CHANGE ME" to fill in.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp, mkdir, readFile, readdir, writeFile, appendFile } from 'node:fs/promises';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { loadConfig } from '../../src/config/load.ts';
import { CHANGE_ME } from '../../src/cli/init.ts';
import { ROOT, http, runCli, spawnGateway, tempDir, waitFor } from '../helpers/gateway.ts';

const EXAMPLES = join(ROOT, 'examples');

/** The example app directories (examples/<dir>/ holding an app), found rather than listed. */
async function exampleDirs(): Promise<string[]> {
  const entries = await readdir(EXAMPLES, { withFileTypes: true });
  return entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name).sort();
}

/** `berth init <args>` then `berth check --config <dir>/berth.yaml`; asserts both, returns the loaded config. */
async function initAndCheck(dir: string, args: string[] = [], expectCode = 0) {
  const res = await runCli(['init', dir, ...args]);
  assert.equal(res.code, expectCode, `berth init ${dir}: ${res.stdout}\n${res.stderr}`);
  const file = join(dir, 'berth.yaml');
  assert.ok(existsSync(file), `${file} written`);
  if (!args.includes('--json')) assert.match(res.stdout, new RegExp(`wrote ${reEscape(file)} `), 'the path written is printed');
  const text = await readFile(file, 'utf8');
  // The repository's YAML parser reads it, and so does the config loader.
  const doc = YAML.parseDocument(text);
  assert.deepEqual(doc.errors, []);
  const config = await loadConfig({ configPath: file, environ: {} });
  const check = await runCli(['check', '--config', file]);
  assert.equal(check.code, 0, `berth check: ${check.stdout}\n${check.stderr}`);
  return { res, file, text, config, raw: doc.toJS() as any };
}

function reEscape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function getBody(port: number, path = '/'): Promise<{ status: number; body: string }> {
  const res = await http({ port }, { path });
  return { status: res.status, body: res.body };
}

/** Starts `berth start` on the file and waits until GET / through the gateway answers 200. */
async function serveThroughGateway(t: TestContext, file: string): Promise<number> {
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 90_000, message: `the app of ${file} ready (gateway stderr: ${gw.stderr()})` });
  return gw.port;
}

test('init in a copy of each example directory: Procfile apps, static routes, health path; berth check passes', async (t) => {
  const base = await tempDir(t, 'berth-init-');
  const examples = await exampleDirs();
  assert.ok(examples.length >= 2, `examples found: ${examples.join(', ')}`);
  for (const name of examples) {
    const dir = join(base, name);
    await cp(join(EXAMPLES, name), dir, { recursive: true });
    const { raw, config, res, text } = await initAndCheck(dir);
    const app = config.apps[name];
    assert.ok(app, `app ${name} in ${Object.keys(config.apps).join(', ')}`);
    assert.equal(app.source, dir);
    assert.equal(config.stateDir, join(dir, '.berth'));
    assert.equal(raw.state_dir, './.berth');
    assert.deepEqual(raw.listen, ['127.0.0.1:8080']);
    assert.match(text, /docs\/SPEC\.md/);
    // Both examples ship a Procfile: berth reads it, so there is no processes key, and a comment says so.
    assert.ok(existsSync(join(dir, 'Procfile')));
    assert.equal(raw.apps[name].processes, undefined);
    assert.equal(app.processes, null);
    assert.match(text, /reads the Procfile/);
    const expectedRoutes = existsSync(join(dir, 'public')) ? [['/public', 'public', null], ['/', null, 'web']] : [['/', null, 'web']];
    assert.deepEqual(app.routes.map((r) => [r.path, r.static, r.to]), expectedRoutes);
    // Both example servers answer /up, and init found it in the Procfile's web file.
    assert.equal(app.health.path, '/up');
    assert.equal(app.health.intervalMs, 2_000);
    assert.doesNotMatch(res.stderr, /warning/, 'the examples read $PORT: no warning');
  }
});

test('init + start on the node-app example: the gateway serves its Procfile web process and its public/ files', async (t) => {
  const base = await tempDir(t, 'berth-init-');
  const dir = join(base, 'node-app');
  await cp(join(EXAMPLES, 'node-app'), dir, { recursive: true });
  const { config } = await initAndCheck(dir, ['--listen', '127.0.0.1:0']);
  assert.deepEqual(config.listen.map((l) => l.text), ['127.0.0.1:0']);
  const port = await serveThroughGateway(t, join(dir, 'berth.yaml'));
  const root = await http({ port }, { path: '/' });
  assert.equal(root.status, 200, root.body);
  assert.equal(root.json().app, 'node-app');
  const css = await getBody(port, '/public/app.css');
  assert.equal(css.status, 200);
  assert.equal(css.body, await readFile(join(dir, 'public/app.css'), 'utf8'));
});

/** What Python app this machine can run through init's command, or why none. */
function pythonVariant(): { kind: 'flask' | 'wsgi' | 'script'; reason: string } | { kind: null; reason: string } {
  const probe = (cmd: string, args: string[], cwd?: string) => spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 30_000 });
  const scratch = spawnSync('mktemp', ['-d'], { encoding: 'utf8' }).stdout.trim();
  try {
    const gunicorn = probe('gunicorn', ['--version']);
    if (!gunicorn.error && gunicorn.status === 0) {
      writeFileSync(join(scratch, 'app.py'), FLASK_APP);
      if (probe('gunicorn', ['--check-config', 'app:app'], scratch).status === 0) return { kind: 'flask', reason: 'gunicorn can load a Flask app' };
      writeFileSync(join(scratch, 'app.py'), WSGI_APP);
      if (probe('gunicorn', ['--check-config', 'app:application'], scratch).status === 0) return { kind: 'wsgi', reason: 'gunicorn without Flask' };
    }
    const python = probe('python3', ['--version']);
    if (!python.error && python.status === 0) return { kind: 'script', reason: 'python3 without gunicorn' };
    return { kind: null, reason: `neither gunicorn nor python3 can run here (${gunicorn.error?.message ?? `gunicorn exit ${gunicorn.status}`}; ${python.error?.message ?? `python3 exit ${python.status}`})` };
  } finally {
    spawnSync('rm', ['-rf', scratch]);
  }
}


const FLASK_APP = `from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "hello from flask"
`;

const WSGI_APP = `def application(environ, start_response):
    body = b"hello from wsgi"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`;

const SCRIPT_APP = `import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from python"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
`;

const variant = pythonVariant();

test(`init + start on a Python app (${variant.reason})`, { skip: variant.kind === null ? variant.reason : false }, async (t) => {
  const base = await tempDir(t, 'berth-init-');
  const dir = join(base, 'py-web');
  await mkdir(dir);
  const expected = {
    flask: { file: FLASK_APP, command: 'gunicorn --bind 127.0.0.1:$PORT --threads 8 app:app', body: 'hello from flask' },
    wsgi: { file: WSGI_APP, command: 'gunicorn --bind 127.0.0.1:$PORT --threads 8 app:application', body: 'hello from wsgi' },
    script: { file: SCRIPT_APP, command: 'python3 app.py', body: 'hello from python' },
  }[variant.kind!];
  await writeFile(join(dir, 'app.py'), expected.file);
  await mkdir(join(dir, 'static'));
  await writeFile(join(dir, 'static', 'site.css'), 'body { color: teal }\n');

  const { config, raw, res } = await initAndCheck(dir, ['--listen', '127.0.0.1:0']);
  const app = config.apps['py-web'];
  assert.ok(app, `apps: ${Object.keys(config.apps).join(', ')}`);
  assert.equal(raw.apps['py-web'].processes.web.command, expected.command);
  assert.equal(app.processes!.web.http, true);
  assert.equal(app.build, null, 'no build for Python');
  assert.match(await readFile(join(dir, 'berth.yaml'), 'utf8'), /No build: berth installs no Python packages/);
  assert.deepEqual(app.routes.map((r) => [r.path, r.static, r.cache, r.to]), [['/static', 'static', null, null], ['/', null, null, 'web']]);
  assert.equal(app.health.path, '/');
  assert.equal(app.health.intervalMs, 2_000);
  assert.doesNotMatch(res.stderr, /warning/, res.stderr);

  const port = await serveThroughGateway(t, join(dir, 'berth.yaml'));
  assert.deepEqual(await getBody(port, '/'), { status: 200, body: expected.body });
  assert.deepEqual(await getBody(port, '/static/site.css'), { status: 200, body: 'body { color: teal }\n' });
});

test('init + start on a node:http app with a start script and no dependencies', async (t) => {
  const base = await tempDir(t, 'berth-init-');
  const dir = join(base, 'Node Web!');
  await mkdir(dir);
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'node-web', private: true, scripts: { start: 'node server.js' } }, null, 2));
  await writeFile(
    join(dir, 'server.js'),
    `const http = require('node:http');
http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('hello from node ' + req.url);
}).listen(Number(process.env.PORT), '127.0.0.1');
`,
  );
  const { config, raw, res, text } = await initAndCheck(dir, ['--listen', '127.0.0.1:0']);
  // The directory name "Node Web!" becomes an app name berth accepts.
  assert.deepEqual(Object.keys(config.apps), ['node-web']);
  const app = config.apps['node-web'];
  assert.equal(raw.apps['node-web'].processes.web.command, 'npm start');
  assert.equal(app.build, null, 'no dependencies: no build');
  assert.equal(app.env.NODE_ENV, 'production');
  assert.match(text, /must listen on 127\.0\.0\.1:\$PORT/);
  assert.deepEqual(app.routes.map((r) => [r.path, r.to]), [['/', 'web']]);
  assert.doesNotMatch(res.stderr, /warning/, 'server.js reads process.env.PORT');

  const port = await serveThroughGateway(t, join(dir, 'berth.yaml'));
  assert.deepEqual(await getBody(port, '/'), { status: 200, body: 'hello from node /' });
  assert.deepEqual(await getBody(port, '/x?y=1'), { status: 200, body: 'hello from node /x?y=1' });
});

test('init on a Node app with dependencies, a lock file, static/ and a hard-coded port: build, static route, warning', async (t) => {
  const dir = join(await tempDir(t, 'berth-init-'), 'shop');
  await mkdir(join(dir, 'static'), { recursive: true });
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'shop', main: 'index.js', dependencies: { express: '^4.0.0' } }));
  await writeFile(join(dir, 'package-lock.json'), '{}');
  await writeFile(join(dir, 'index.js'), "const app = require('express')();\napp.get('/healthz', (req, res) => res.send('ok'));\napp.listen(3000);\n");
  const { config, raw, res } = await initAndCheck(dir, ['--json']);
  const app = config.apps.shop;
  assert.equal(raw.apps.shop.processes.web.command, 'node index.js');
  assert.equal(app.build, 'npm ci --omit=dev');
  assert.deepEqual(app.routes.map((r) => [r.path, r.static, r.to]), [['/static', 'static', null], ['/', null, 'web']]);
  assert.equal(app.health.path, '/healthz');
  assert.match(res.stderr, /index\.js listens on the fixed port 3000: .*process\.env\.PORT/);
  const out = JSON.parse(res.stdout);
  assert.equal(out.ok, true);
  assert.equal(out.detected, 'node');
  assert.equal(out.build, 'npm ci --omit=dev');
  assert.equal(out.file, join(dir, 'berth.yaml'));
  assert.ok(out.warnings.some((w: string) => /fixed port 3000/.test(w)));

  // Without a lock file the build is a plain install.
  const plain = join(await tempDir(t, 'berth-init-'), 'shop2');
  await mkdir(plain);
  await writeFile(join(plain, 'package.json'), JSON.stringify({ name: 'shop2', scripts: { start: 'node server.js' }, dependencies: { express: '^4.0.0' } }));
  await writeFile(join(plain, 'server.js'), 'require("node:http").createServer().listen(process.env.PORT);\n');
  const second = await initAndCheck(plain);
  assert.equal(second.config.apps.shop2.build, 'npm install --omit=dev');
});

test('a second init without --force exits 2 naming the file and leaves it unchanged; --force rewrites it', async (t) => {
  const dir = join(await tempDir(t, 'berth-init-'), 'twice-app');
  await mkdir(dir);
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'twice-app', scripts: { start: 'node server.js' } }));
  await writeFile(join(dir, 'server.js'), 'require("node:http").createServer((q, s) => s.end("hi")).listen(process.env.PORT);\n');
  const { file, text: first } = await initAndCheck(dir);
  await appendFile(file, '# edited by hand\n');
  const edited = await readFile(file, 'utf8');

  const refused = await runCli(['init', dir]);
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, new RegExp(`${reEscape(file)} already exists.*--force`));
  assert.equal(await readFile(file, 'utf8'), edited, 'the file is unchanged');
  assert.deepEqual((await readdir(dir)).sort(), ['berth.yaml', 'package.json', 'server.js'], 'no temp file left behind');

  // From inside the directory, with no argument: the same refusal.
  const here = await runCli(['init'], { cwd: dir });
  assert.equal(here.code, 2);
  assert.match(here.stderr, /berth\.yaml already exists/);

  const forced = await runCli(['init', dir, '--force', '--name', 'other']);
  assert.equal(forced.code, 0, forced.stderr);
  const rewritten = await readFile(file, 'utf8');
  assert.doesNotMatch(rewritten, /edited by hand/);
  assert.equal(rewritten, first.replaceAll('twice-app', 'other'), 'rewritten as a fresh init, under the new name');
  const check = await runCli(['check', '--config', file]);
  assert.equal(check.code, 0, check.stderr);
});

test('an empty directory: exit 1, the file is written with CHANGE ME, and says what to fill in', async (t) => {
  const dir = join(await tempDir(t, 'berth-init-'), 'blank');
  await mkdir(dir);
  const { config, raw, res, text } = await initAndCheck(dir, [], 1);
  assert.equal(raw.apps.blank.processes.web.command, CHANGE_ME);
  assert.match(text, /CHANGE ME/);
  assert.equal(config.apps.blank.processes!.web.command, CHANGE_ME);
  assert.match(res.stderr, /no app detected/);
  assert.match(res.stderr, /apps\.blank\.processes\.web\.command/);
  assert.match(res.stderr, /CHANGE ME/);
});

test('bad arguments exit 2 with the usage line and write nothing', async (t) => {
  const dir = join(await tempDir(t, 'berth-init-'), 'args');
  await mkdir(dir);
  for (const args of [[dir, '--name', 'Not Valid'], [dir, '--port-env', '1X'], [dir, '--listen', 'nowhere'], [join(dir, 'missing')], [dir, dir], [dir, '--bogus']]) {
    const res = await runCli(['init', ...args]);
    assert.equal(res.code, 2, `${args.join(' ')}: ${res.stdout}${res.stderr}`);
    assert.match(res.stderr, /usage: berth init/, args.join(' '));
  }
  assert.deepEqual(await readdir(dir), [], 'nothing written');
});
