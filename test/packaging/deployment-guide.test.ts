/**
 * The operator's guides (docs/deployment.md, operations.md, migrating.md) and the install path the
 * deployment guide sends the reader down (packaging/install.sh), checked the way a reader uses them:
 * - every berth.yaml in the guides (a fenced block whose info string is `yaml berth`, optionally with
 *   `env=NAME`) loads with the real config loader and passes what `berth check` adds to it (certificate
 *   files, loaded strictly; the permission rule for a berth that is not root), with the files it names
 *   made in a temp root; every other YAML block says what it is instead (`yaml compose`, ...);
 * - every `berth <verb> [flags]` in their shell blocks is a verb and flags of this CLI's `berth help`;
 * - their links to files and headings resolve;
 * - as root: install.sh on a temp system root (seeded with copies of this machine's /etc/passwd, group,
 *   shadow, gshadow and login.defs) makes the user and group, the state dir, the config and the unit;
 *   a second run changes nothing; an edited config survives and an older unit is replaced (kept as
 *   .bak); an unprivileged run is refused and touches nothing.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import type { BerthConfig } from '../../src/config/schema.ts';
import { checkCertificates } from '../../src/cli/certificate-checks.ts';
import { checkUsers } from '../../src/cli/user-checks.ts';
import { ConfigError, formatProblems } from '../../src/lib/errors.ts';
import { MAIN, ROOT, runCli, tempDir } from '../helpers/gateway.ts';
import { createCa, issueCertificate, type TestCa } from '../helpers/certificates.ts';

const GUIDES = ['docs/deployment.md', 'docs/operations.md', 'docs/migrating.md'];
const PACKAGING = join(ROOT, 'packaging');
const INSTALL = join(PACKAGING, 'install.sh');

/** YAML blocks that are not berth configs must say what they are; these are the names allowed. */
const OTHER_YAML = new Set(['compose', 'prometheus', 'kamal']);

interface Block {
  file: string;
  /** 1-based line of the opening fence. */
  line: number;
  /** The info string's words: ["yaml", "berth", "env=production"]. */
  info: string[];
  text: string;
}

/** The fenced code blocks of a markdown file, indented ones (inside list items) included. */
function fencedBlocks(file: string): Block[] {
  const lines = readFileSync(join(ROOT, file), 'utf8').split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,})\s*(.*)$/.exec(lines[i]);
    if (!open) continue;
    const [, indent, fence, info] = open;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      if (new RegExp(`^\\s*${fence}\`*\\s*$`).test(lines[j])) break;
      body.push(lines[j].startsWith(indent) ? lines[j].slice(indent.length) : lines[j].trimStart());
    }
    assert.ok(j < lines.length, `${file}:${i + 1}: the code block is never closed`);
    blocks.push({ file, line: i + 1, info: info.trim().split(/\s+/).filter(Boolean), text: body.join('\n') + '\n' });
    i = j;
  }
  return blocks;
}

const ALL_BLOCKS = GUIDES.flatMap(fencedBlocks);
const CONFIG_BLOCKS = ALL_BLOCKS.filter((b) => b.info[0] === 'yaml' && b.info[1] === 'berth');

// ---- the configs in the guides ----

/**
 * The guides write production paths (/etc/berth, /var/lib/berth, /srv/shop). The copy checked here has
 * them under `root`, so that certificate files can be made there and nothing outside is read.
 */
function underRoot(yaml: string, root: string): string {
  return yaml.replace(/(^|[\s"'[{,:])\/(etc|var|srv|opt|home|usr)\//gm, `$1${root}/$2/`);
}

/** Makes every certificate file the config names (a throwaway CA's, for the names they must serve). */
async function makeCertificates(config: BerthConfig, root: string): Promise<void> {
  if (!config.listen.some((l) => l.tls)) return;
  let ca: TestCa | null = null;
  const issue = async (names: string[], certificate: string, key: string): Promise<void> => {
    ca ??= await createCa(join(root, 'test-ca'));
    mkdirSync(dirname(certificate), { recursive: true });
    mkdirSync(dirname(key), { recursive: true });
    await issueCertificate(ca, names.length > 0 ? names : ['localhost'], { certificate, key, days: 90 });
  };
  for (const app of Object.values(config.apps)) {
    for (const cert of app.tls) await issue(cert.hosts.length > 0 ? cert.hosts : app.hosts, cert.files.certificate, cert.files.key);
  }
  const dir = config.tls.directory;
  if (dir !== null) {
    mkdirSync(dir, { recursive: true });
    for (const app of Object.values(config.apps)) {
      if (app.tls.length === 0 && !app.acme && app.hosts.length > 0) await issue(app.hosts, join(dir, `${app.name}.crt`), join(dir, `${app.name}.key`));
    }
  }
  const fallback = config.tls.defaultCertificate;
  if (fallback !== null) await issue(['localhost'], fallback.certificate, fallback.key);
}

/**
 * Checks one config as `berth check` would for the packaged service (berth not root): the loader, then
 * the certificate files, then the permission rule. Throws ConfigError listing the problems.
 */
async function checkGuideConfig(t: TestContext, yaml: string, env: string | null): Promise<BerthConfig> {
  const root = await tempDir(t, 'berth-guide-');
  const path = join(root, 'etc/berth/berth.yaml');
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, underRoot(yaml, root));
  const config = await loadConfig({ configPath: path, env: env ?? undefined, environ: {} });
  assert.ok(config.stateDir.startsWith(root + '/'), `state_dir ${config.stateDir} is under the temp root`);
  await makeCertificates(config, root);
  const problems = [...(await checkCertificates(config)).problems, ...checkUsers(config, false).problems];
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

test('every YAML block of the guides says what it is, and most are berth configs', () => {
  const yaml = ALL_BLOCKS.filter((b) => b.info[0] === 'yaml' || b.info[0] === 'yml');
  const unnamed = yaml.filter((b) => b.info[1] !== 'berth' && !OTHER_YAML.has(b.info[1] ?? ''));
  assert.deepEqual(
    unnamed.map((b) => `${b.file}:${b.line} \`\`\`${b.info.join(' ')}`),
    [],
    `a YAML block is \`\`\`yaml berth (checked as a config) or names what else it is (${[...OTHER_YAML].join(', ')})`,
  );
  for (const guide of GUIDES) assert.ok(CONFIG_BLOCKS.some((b) => b.file === guide), `${guide} has berth configs`);
  assert.ok(CONFIG_BLOCKS.length >= 10, `found ${CONFIG_BLOCKS.length} berth configs`);
});

test('every berth.yaml in the guides passes berth check', async (t) => {
  for (const block of CONFIG_BLOCKS) {
    const env = block.info.find((w) => w.startsWith('env='))?.slice('env='.length) ?? null;
    await t.test(`${block.file}:${block.line}${env ? ` (--env ${env})` : ''}`, async (t) => {
      try {
        const config = await checkGuideConfig(t, block.text, env);
        assert.equal(config.environment, env);
      } catch (err) {
        if (err instanceof ConfigError) assert.fail(`${block.file}:${block.line}: berth check refuses it:\n${formatProblems(err.problems)}`);
        throw err;
      }
    });
  }
});

test('the starter config install.sh puts in /etc/berth passes berth check, with the packaged paths', async (t) => {
  const config = await checkGuideConfig(t, readFileSync(join(PACKAGING, 'berth.yaml'), 'utf8'), null);
  assert.ok(config.stateDir.endsWith('/var/lib/berth'));
  assert.deepEqual(config.listen.map((l) => l.text), ['0.0.0.0:80']);
  assert.deepEqual(Object.keys(config.apps), []);
});

test('the config check itself: files a config names are made, and a broken config is refused', async (t) => {
  const withFiles = [
    'state_dir: /var/lib/berth',
    'listen: ["0.0.0.0:80", { address: "0.0.0.0:443", tls: true }]',
    'tls: { directory: /etc/berth/certs, default_certificate: { certificate: /etc/berth/default.crt, key: /etc/berth/default.key } }',
    'apps:',
    '  shop: { hosts: ["shop.example.com"], processes: { web: { command: "node server.js" } }, tls: { certificate: /etc/ssl/shop.crt, key: /etc/ssl/shop.key } }',
    '  blog: { hosts: ["blog.example.com"], processes: { web: { command: "node server.js" } } }',
  ].join('\n');
  const config = await checkGuideConfig(t, withFiles, null);
  assert.ok(existsSync(config.apps.shop.tls[0].files.key), 'the app certificate was made');
  assert.ok(existsSync(join(config.tls.directory!, 'blog.crt')), 'the directory certificate was made');
  await assert.rejects(checkGuideConfig(t, 'listen: ["0.0.0.0:80"]\napps:\n  shop: { hosts: ["shop.example.com"], procesess: {} }\n', null), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.match(formatProblems(err.problems), /apps\.shop\.procesess: unknown key/);
    return true;
  });
});

// ---- the commands in the guides ----

/** Verbs that work without a gateway; every other verb is a client of the control API. */
const LOCAL_VERBS = new Set(['start', 'check', 'init', 'token', 'completion']);
/** What every client verb accepts, as `berth help` says below its list. */
const CLIENT_FLAGS = ['--config', '--config-name', '--env', '--socket', '--url', '--json'];

/** `berth help`, run once; its verbs and flags are what the guides may use. */
const HELP = spawnSync(process.execPath, [MAIN, 'help'], { encoding: 'utf8', cwd: ROOT });

/** Verb -> its usage line, from `berth help`. */
function cliUsages(): Map<string, string> {
  const usages = new Map<string, string>();
  for (const [, line, verb] of HELP.stdout.matchAll(/^ {2}(berth ([a-z][a-z-]*)\b.*)$/gm)) usages.set(verb, line);
  return usages;
}

interface Command {
  where: string;
  verb: string;
  flags: string[];
}

/**
 * The berth commands of the guides' shell blocks: each command of each line (split at `&&`, `||`, `;`,
 * `|` and `$(`), after env assignments, `sudo`, `runuser ... --` and `docker exec [opts] NAME`. Comments
 * and heredoc bodies (file contents) are skipped.
 */
function guideCommands(): Command[] {
  const commands: Command[] = [];
  for (const block of ALL_BLOCKS.filter((b) => b.info[0] === 'sh')) {
    const lines = block.text.replace(/\\\n/g, ' ').split('\n');
    let heredoc: string | null = null;
    lines.forEach((raw, i) => {
      if (heredoc !== null) {
        if (raw.trim() === heredoc) heredoc = null;
        return;
      }
      const line = raw.replace(/(^|\s)#.*$/, '');
      heredoc = /<<-?\s*'?"?([A-Za-z_]+)'?"?/.exec(line)?.[1] ?? null;
      for (const segment of line.split(/&&|\|\||;|\||\$\(/)) {
        const words = segment.trim().split(/\s+/).filter(Boolean);
        while (words.length > 0) {
          if (/^[A-Z_][A-Z0-9_]*=/.test(words[0]) || words[0] === 'sudo' || words[0] === 'exec') words.shift();
          else if (words[0] === 'runuser' && words.includes('--')) words.splice(0, words.indexOf('--') + 1);
          else if (words[0] === 'docker' && words[1] === 'exec') {
            words.splice(0, 2);
            while (words[0]?.startsWith('-')) words.splice(0, ['-e', '--env', '-u', '--user', '-w', '--workdir'].includes(words[0]) ? 2 : 1);
            words.shift();
          } else break;
        }
        if (words[0] !== 'berth' || words.length < 2 || words[1].startsWith('-')) continue;
        commands.push({ where: `${block.file}:${block.line + 1 + i}`, verb: words[1], flags: words.slice(2).filter((w) => /^--?[a-z]/.test(w)).map((w) => w.split('=')[0]) });
      }
    });
  }
  return commands;
}

const USAGES = cliUsages();
const COMMANDS = guideCommands();

/** Whether `flag` appears as a flag in a usage line (`--x `, `[--x]`, `[-n N]`, `--x|...`). */
function usageHas(usage: string, flag: string): boolean {
  return new RegExp(`(^|[\\s\\[|])${flag.replace(/[-]/g, '\\-')}(?=[\\s\\]|=]|$)`).test(usage);
}

function flagProblems(commands: Command[]): string[] {
  const problems: string[] = [];
  for (const c of commands) {
    const usage = USAGES.get(c.verb);
    if (usage === undefined) {
      problems.push(`${c.where}: berth ${c.verb} is not a verb of this CLI`);
      continue;
    }
    for (const flag of c.flags) {
      if (usageHas(usage, flag) || (!LOCAL_VERBS.has(c.verb) && CLIENT_FLAGS.includes(flag))) continue;
      problems.push(`${c.where}: berth ${c.verb} has no ${flag} (${usage})`);
    }
  }
  return problems;
}

test('every berth command in the guides is a verb and flags of this CLI', () => {
  assert.equal(HELP.status, 0, HELP.stderr);
  for (const flag of ['--socket', '--url', '--config']) assert.ok(HELP.stdout.includes(flag), `berth help mentions ${flag} for client verbs`);
  assert.ok(USAGES.size >= 15, `berth help lists ${USAGES.size} verbs`);
  assert.ok(COMMANDS.length >= 30, `found ${COMMANDS.length} berth commands in the guides`);
  for (const verb of ['check', 'status', 'deploy', 'logs', 'certs', 'history']) assert.ok(COMMANDS.some((c) => c.verb === verb), `the guides use berth ${verb}`);
  assert.deepEqual(flagProblems(COMMANDS.filter((c) => c.verb !== 'upgrade')), []);
});

test('the guides\' berth upgrade is a verb of this CLI', { skip: USAGES.has('upgrade') ? false : 'berth help does not list upgrade in this build' }, () => {
  const upgrades = COMMANDS.filter((c) => c.verb === 'upgrade');
  assert.ok(upgrades.length > 0, 'operations.md shows berth upgrade');
  assert.deepEqual(flagProblems(upgrades), []);
});

// ---- links ----

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes, repeats numbered. */
function anchors(file: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  let fence: string | null = null;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const f = /^\s*(`{3,})/.exec(line);
    if (f) {
      if (fence === null) fence = f[1];
      else if (f[1].length >= fence.length) fence = null;
      continue;
    }
    const h = fence === null ? /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line) : null;
    if (!h) continue;
    const text = h[1].replace(/\[([^\]]*)\]\([^)]*\)/g, '$1').replace(/`/g, '');
    const slug = text.toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return out;
}

test('the guides\' links lead to files and headings that exist', () => {
  const problems: string[] = [];
  let count = 0;
  for (const guide of GUIDES) {
    const path = join(ROOT, guide);
    const text = readFileSync(path, 'utf8').replace(/^\s*```[\s\S]*?^\s*```/gm, '');
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(target)) continue;
      count++;
      const [file, anchor] = target.split('#');
      const dest = file === '' ? path : resolve(dirname(path), file);
      if (!existsSync(dest)) problems.push(`${guide}: ${target}: no such file`);
      else if (anchor !== undefined && dest.endsWith('.md') && !anchors(dest).has(anchor)) problems.push(`${guide}: ${target}: no such heading in ${relative(ROOT, dest)}`);
    }
  }
  assert.ok(count >= 20, `checked ${count} links`);
  assert.deepEqual(problems, []);
});

// ---- install.sh ----

test('install.sh: an unknown argument is refused with exit status 2 and the usage', () => {
  const res = spawnSync('sh', [INSTALL, '--bogus'], { encoding: 'utf8' });
  assert.equal(res.status, 2, res.stderr);
  assert.match(res.stderr, /unknown argument: --bogus\nusage: sh .*install\.sh \[--root DIR\]/);
});

const AS_ROOT = process.getuid?.() === 0;
const HAS_USERADD = spawnSync('sh', ['-c', 'command -v useradd && command -v groupadd'], { encoding: 'utf8' }).status === 0;
const ROOT_SKIP = !AS_ROOT ? 'needs root: install.sh makes a user with useradd --root and chowns what it makes (CI runs as root)' : !HAS_USERADD ? 'useradd and groupadd are not installed' : false;

/** Every entry under `dir`: type, mode, owner, size, mtime and content hash, to compare two runs. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    const path = join(dir, name);
    const st = lstatSync(path);
    const content = st.isFile() ? createHash('sha256').update(readFileSync(path)).digest('hex') : st.isSymbolicLink() ? readlinkSync(path) : '';
    out[name] = `${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.mtimeMs} ${content}`;
  }
  return out;
}

/** A temp system root holding copies of this machine's account files, as useradd --root needs. */
async function systemRoot(t: TestContext): Promise<string> {
  const root = await tempDir(t, 'berth-install-');
  mkdirSync(join(root, 'etc'));
  for (const name of ['passwd', 'group', 'shadow', 'gshadow', 'login.defs']) {
    if (existsSync(join('/etc', name))) copyFileSync(join('/etc', name), join(root, 'etc', name));
  }
  return root;
}

function install(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const res = spawnSync('sh', [INSTALL, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

test('install.sh --root: the user and group, the state dir, the config and the unit; a second run changes nothing', { skip: ROOT_SKIP }, async (t) => {
  const root = await systemRoot(t);
  const hostPasswd = readFileSync('/etc/passwd', 'utf8');
  const hostGroup = readFileSync('/etc/group', 'utf8');

  const first = install(['--root', root]);
  assert.equal(first.status, 0, first.stdout + first.stderr);
  for (const made of ['group berth: created', 'user berth: created', 'state dir /var/lib/berth: created', 'config dir /etc/berth: created', 'config /etc/berth/berth.yaml: created', 'unit /etc/systemd/system/berth.service: installed']) {
    assert.ok(first.stdout.includes(made), `says "${made}":\n${first.stdout}`);
  }
  // What remains is printed, not run: this is not the machine's own root.
  assert.match(first.stdout, /systemctl daemon-reload && systemctl enable --now berth/);
  assert.match(first.stdout, /runuser -u berth -- berth check --config \/etc\/berth\/berth\.yaml/);

  // The account went to the temp root alone: a system user (below UID_MIN), no login, home = state dir.
  assert.equal(readFileSync('/etc/passwd', 'utf8'), hostPasswd, "this machine's /etc/passwd is untouched");
  assert.equal(readFileSync('/etc/group', 'utf8'), hostGroup, "this machine's /etc/group is untouched");
  const group = /^berth:[^:]*:(\d+):/m.exec(readFileSync(join(root, 'etc/group'), 'utf8'));
  assert.ok(group, 'a berth line in <root>/etc/group');
  const gid = Number(group[1]);
  const user = /^berth:[^:]*:(\d+):(\d+):[^:\n]*:([^:\n]*):([^:\n]*)$/m.exec(readFileSync(join(root, 'etc/passwd'), 'utf8'));
  assert.ok(user, 'a berth line in <root>/etc/passwd');
  const uid = Number(user[1]);
  assert.equal(Number(user[2]), gid, 'its primary group is berth');
  assert.equal(user[3], '/var/lib/berth');
  assert.equal(user[4], '/usr/sbin/nologin');
  const defs = existsSync(join(root, 'etc/login.defs')) ? readFileSync(join(root, 'etc/login.defs'), 'utf8') : '';
  const uidMin = Number(/^UID_MIN\s+(\d+)/m.exec(defs)?.[1] ?? 1000);
  assert.ok(uid > 0 && uid < uidMin, `uid ${uid} is a system uid (below ${uidMin})`);

  const mode = (path: string) => lstatSync(join(root, path)).mode & 0o7777;
  const owner = (path: string) => `${lstatSync(join(root, path)).uid}:${lstatSync(join(root, path)).gid}`;
  assert.ok(lstatSync(join(root, 'var/lib/berth')).isDirectory());
  assert.equal(owner('var/lib/berth'), `${uid}:${gid}`, 'the state dir belongs to berth');
  assert.equal(mode('var/lib/berth'), 0o700);
  assert.equal(owner('etc/berth'), `0:${gid}`);
  assert.equal(mode('etc/berth'), 0o750);
  assert.equal(readFileSync(join(root, 'etc/berth/berth.yaml'), 'utf8'), readFileSync(join(PACKAGING, 'berth.yaml'), 'utf8'));
  assert.equal(owner('etc/berth/berth.yaml'), `0:${gid}`, 'root writes the config, berth reads it');
  assert.equal(mode('etc/berth/berth.yaml'), 0o640);
  assert.equal(readFileSync(join(root, 'etc/systemd/system/berth.service'), 'utf8'), readFileSync(join(PACKAGING, 'berth.service'), 'utf8'));
  assert.equal(owner('etc/systemd/system/berth.service'), '0:0');
  assert.equal(mode('etc/systemd/system/berth.service'), 0o644);

  // The installed config is one the real `berth check` accepts, with the packaged state dir.
  const check = await runCli(['check', '--config', join(root, 'etc/berth/berth.yaml')]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /^state dir: +\/var\/lib\/berth$/m);

  // Again: everything is there, and nothing changes (not a byte, a mode, an owner or a time).
  const before = snapshot(root);
  const second = install(['--root', root]);
  assert.equal(second.status, 0, second.stdout + second.stderr);
  assert.deepEqual(snapshot(root), before);
  assert.equal(second.stdout.match(/: already there/g)?.length, 6, second.stdout);
  assert.doesNotMatch(second.stdout, /created|installed|replaced/);
});

test('install.sh --root: an edited config is kept, an older unit is replaced and kept as .bak', { skip: ROOT_SKIP }, async (t) => {
  const root = await systemRoot(t);
  assert.equal(install(['--root', root]).status, 0);
  const config = join(root, 'etc/berth/berth.yaml');
  const unit = join(root, 'etc/systemd/system/berth.service');
  const mine = 'state_dir: /var/lib/berth\nlisten: ["0.0.0.0:8080"]\n';
  writeFileSync(config, mine);
  const older = readFileSync(unit, 'utf8').replace('TimeoutStopSec=180', 'TimeoutStopSec=90');
  writeFileSync(unit, older);

  const res = install(['--root', root]);
  assert.equal(res.status, 0, res.stdout + res.stderr);
  assert.equal(readFileSync(config, 'utf8'), mine, 'the config is never overwritten');
  assert.match(res.stdout, /berth\.yaml: already there, left as it is/);
  assert.equal(readFileSync(unit, 'utf8'), readFileSync(join(PACKAGING, 'berth.service'), 'utf8'), 'the packaged unit is installed');
  assert.equal(readFileSync(`${unit}.bak`, 'utf8'), older, 'the unit it replaced is kept');
  assert.match(res.stdout, /replaced; the previous one is berth\.service\.bak/);
});

test('install.sh --root: a directory that is not a system root is refused', { skip: ROOT_SKIP }, async (t) => {
  const root = await tempDir(t, 'berth-install-');
  const res = install(['--root', root]);
  assert.equal(res.status, 1);
  assert.match(res.stderr, /is not a system root: .*\/etc\/passwd and .*\/etc\/group must exist/);
  assert.deepEqual(readdirSync(root), []);
});

const RUNUSER = spawnSync('sh', ['-c', 'command -v runuser && getent passwd nobody'], { encoding: 'utf8' }).status === 0;

test('install.sh refuses to run without root, and touches nothing', { skip: ROOT_SKIP || (RUNUSER ? false : 'runuser or the user nobody is missing') }, async (t) => {
  // A copy nobody can read, whatever the checkout's own permissions.
  const copy = await tempDir(t, 'berth-install-copy-');
  chmodSync(copy, 0o755);
  for (const name of ['install.sh', 'berth.service', 'berth.yaml']) copyFileSync(join(PACKAGING, name), join(copy, name));
  const root = await systemRoot(t);
  chmodSync(root, 0o755);
  const before = snapshot(root);
  const res = spawnSync('runuser', ['-u', 'nobody', '--', 'sh', join(copy, 'install.sh'), '--root', root], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(res.status, 1, res.stdout + res.stderr);
  assert.equal(res.stdout, '');
  assert.match(res.stderr, /^install\.sh: must run as root: .*run it again as root: sh .*install\.sh --root /);
  assert.deepEqual(snapshot(root), before);
});
