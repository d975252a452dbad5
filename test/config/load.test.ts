import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, resolveConfigPath, type LoadOptions } from '../../src/config/load.ts';
import { formatCheckReport } from '../../src/config/describe.ts';
import { ConfigError } from '../../src/lib/errors.ts';

const GOLDEN_DIR = join(import.meta.dirname, 'golden');

/**
 * Golden cases: golden/<name>.yaml loads to golden/<name>.json (the normalised config) and prints
 * golden/<name>.check.txt (`berth check`). The fixture directory is written as `<dir>` so the files do
 * not depend on where the checkout lives. Regenerate with UPDATE_GOLDEN=1 and review the diff.
 */
const GOLDEN_CASES: { name: string; env?: string; environ?: Record<string, string> }[] = [
  { name: 'full' },
  { name: 'minimal' },
  {
    name: 'environments',
    env: 'production',
    environ: {
      BERTH_TRUSTED_PROXY_COUNT: '2',
      BERTH_APPS__MY_SHOP__PROCESSES__WEB__CONCURRENCY: '5',
      BERTH_APPS__MY_SHOP__HOSTS: '[shop.example.com, www.shop.example.com]',
      BERTH_APPS__MY_SHOP__ENV__FEATURE_FLAGS: 'a,b',
      BERTH_CONTROL__LISTEN: '127.0.0.1:7000',
      BERTH_LOG_LEVELS__Proxy: 'error',
      // Not config keys: left alone.
      BERTH_TOKEN: 'secret',
      BERTH_APP: 'my-shop',
      BERTH_CONTROL_SOCKET: '/elsewhere.sock',
      BERTH_FASTPURGE_HOST_PRODUCTION: 'akab.example.net',
    },
  },
  { name: 'procfile' },
];

for (const c of GOLDEN_CASES) {
  test(`golden: ${c.name}.yaml`, async () => {
    const config = await loadConfig({ configPath: join(GOLDEN_DIR, `${c.name}.yaml`), env: c.env, environ: c.environ ?? {} });
    const json = JSON.stringify(config, null, 2).replaceAll(GOLDEN_DIR, '<dir>') + '\n';
    const report = formatCheckReport(config).replaceAll(GOLDEN_DIR, '<dir>') + '\n';
    const jsonFile = join(GOLDEN_DIR, `${c.name}.json`);
    const reportFile = join(GOLDEN_DIR, `${c.name}.check.txt`);
    if (process.env.UPDATE_GOLDEN === '1') {
      await writeFile(jsonFile, json);
      await writeFile(reportFile, report);
    }
    assert.deepStrictEqual(JSON.parse(json), JSON.parse(await readFile(jsonFile, 'utf8')));
    assert.equal(report, await readFile(reportFile, 'utf8'));
  });
}

/** A temp dir removed after the test. */
async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-config-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes `text` as <dir>/berth.yaml and loads it. */
async function load(dir: string, text: string, opts: LoadOptions = {}) {
  const configPath = join(dir, 'berth.yaml');
  await writeFile(configPath, text);
  return loadConfig({ configPath, environ: {}, ...opts });
}

/** The ConfigError problems loading `text` produces, as `path: message` lines. */
async function loadProblems(dir: string, text: string, opts: LoadOptions = {}): Promise<string[]> {
  const err = await load(dir, text, opts).then(
    () => assert.fail('expected the config to be rejected'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
  return err.problems.map((p) => (p.path ? `${p.path}: ${p.message}` : p.message));
}

test('resolveConfigPath: --config, then BERTH_CONFIG, then --config-name, then ./berth.yaml', () => {
  const cwd = '/srv/site';
  const all = { configPath: 'a.yaml', configName: 'staging', cwd, environ: { BERTH_CONFIG: '/etc/berth/b.yaml' } };
  assert.equal(resolveConfigPath(all), '/srv/site/a.yaml');
  assert.equal(resolveConfigPath({ ...all, configPath: undefined }), '/etc/berth/b.yaml');
  assert.equal(resolveConfigPath({ ...all, configPath: undefined, environ: { BERTH_CONFIG: '' } }), '/srv/site/configs/staging.yaml');
  assert.equal(resolveConfigPath({ cwd, environ: {} }), '/srv/site/berth.yaml');
  assert.equal(resolveConfigPath({ configPath: '/abs/x.yaml', cwd, environ: {} }), '/abs/x.yaml');
  assert.equal(resolveConfigPath({ cwd, environ: { BERTH_CONFIG: 'rel/c.yaml' } }), '/srv/site/rel/c.yaml');
  // BERTH_CONFIG_NAME is the env form of --config-name: below BERTH_CONFIG and the flag.
  assert.equal(resolveConfigPath({ cwd, environ: { BERTH_CONFIG_NAME: 'prod' } }), '/srv/site/configs/prod.yaml');
  assert.equal(resolveConfigPath({ cwd, configName: 'staging', environ: { BERTH_CONFIG_NAME: 'prod' } }), '/srv/site/configs/staging.yaml');
  assert.equal(resolveConfigPath({ cwd, environ: { BERTH_CONFIG: 'b.yaml', BERTH_CONFIG_NAME: 'prod' } }), '/srv/site/b.yaml');
  // A name is a file name under configs/, never a way out of it.
  assert.throws(() => resolveConfigPath({ cwd, environ: { BERTH_CONFIG_NAME: '../../etc/x' } }), /config name "..\/..\/etc\/x": expected letters/);
});

test('app env values reach the app exactly as written in the file, environments included', async (t) => {
  const dir = await tempDir(t);
  await writeFile(
    join(dir, 'berth.yaml'),
    [
      'apps:',
      '  shop:',
      '    env: { ZIP: 0123, MASK: 0x1F, RATIO: 1.50, BIG: 0123e4, YES: yes, ON: true, Q: "007", NONE: ~ }',
      '    processes:',
      '      web: { command: "node s.js", env: { OCT: 0o17 } }',
      'environments:',
      '  prod:',
      '    apps: { shop: { env: { PORT_HINT: 08080 } } }',
      '',
    ].join('\n'),
  );
  const config = await loadConfig({ cwd: dir, environ: {}, env: 'prod' });
  assert.deepEqual(config.apps.shop.env, { ZIP: '0123', MASK: '0x1F', RATIO: '1.50', BIG: '0123e4', YES: 'yes', ON: 'true', Q: '007', NONE: '', PORT_HINT: '08080' });
  assert.deepEqual(config.apps.shop.processes?.web.env, { OCT: '0o17' });
  // Other keys are still read as YAML: 0x10 instances is 16.
  await writeFile(join(dir, 'berth.yaml'), 'apps: { shop: { processes: { web: { command: "x", instances: 0x2 } }, env: { N: 0x2 } } }\n');
  const other = await loadConfig({ cwd: dir, environ: { BERTH_APPS__SHOP__PROCESSES__WEB__ENV__K: '0123' } });
  assert.equal(other.apps.shop.processes?.web.instances, 2);
  assert.deepEqual(other.apps.shop.env, { N: '0x2' });
  assert.deepEqual(other.apps.shop.processes?.web.env, { K: '0123' });
});

test('loadConfig reads the file the resolution order picks', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'configs'));
  const write = (file: string, count: number) => writeFile(join(dir, file), `trusted_proxy_count: ${count}\n`);
  await Promise.all([write('berth.yaml', 1), write('configs/staging.yaml', 2), write('env.yaml', 3), write('flag.yaml', 4)]);
  const count = async (opts: LoadOptions) => (await loadConfig({ cwd: dir, ...opts })).trustedProxyCount;
  assert.equal(await count({ environ: {} }), 1);
  assert.equal(await count({ environ: {}, configName: 'staging' }), 2);
  assert.equal(await count({ environ: { BERTH_CONFIG: 'env.yaml' }, configName: 'staging' }), 3);
  assert.equal(await count({ environ: { BERTH_CONFIG: 'env.yaml' }, configName: 'staging', configPath: 'flag.yaml' }), 4);
  const config = await loadConfig({ cwd: dir, environ: {}, configName: 'staging' });
  assert.equal(config.file, join(dir, 'configs', 'staging.yaml'));
  assert.equal(config.stateDir, join(dir, 'configs', '.berth'), 'state_dir is relative to the config file');
});

test('a missing file is a ConfigError naming it', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'nope.yaml');
  await assert.rejects(loadConfig({ configPath: file, environ: {} }), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.message, `cannot read config file ${file}: no such file`);
    return true;
  });
  await assert.rejects(loadConfig({ configPath: dir, environ: {} }), /it is a directory/);
});

test('a YAML syntax error names the file, line and column', async (t) => {
  const dir = await tempDir(t);
  const bad = await loadProblems(dir, 'listen: ["127.0.0.1:0"]\napps:\n  shop: { hosts: [a.test }\n');
  assert.equal(bad.length >= 1, true);
  assert.match(bad[0], new RegExp(`^${escape(join(dir, 'berth.yaml'))}:3:\\d+: YAML syntax error: `));
  const dup = await loadProblems(dir, 'listen: "127.0.0.1:0"\nlisten: "127.0.0.1:1"\n');
  assert.match(dup[0], new RegExp(`^${escape(join(dir, 'berth.yaml'))}:2:1: YAML syntax error: Map keys must be unique`));
});

test('a non-mapping top level is a ConfigError; an empty file uses every default', async (t) => {
  const dir = await tempDir(t);
  assert.deepEqual(await loadProblems(dir, '- a\n- b\n'), [`${join(dir, 'berth.yaml')}: the top level must be a mapping of keys, got a list`]);
  assert.deepEqual(await loadProblems(dir, 'just text\n'), [`${join(dir, 'berth.yaml')}: the top level must be a mapping of keys, got a string`]);
  const config = await load(dir, '# nothing yet\n');
  assert.deepEqual(config.apps, {});
  assert.equal(config.stateDir, join(dir, '.berth'));
});

test('YAML anchors and merge keys work', async (t) => {
  const dir = await tempDir(t);
  const config = await load(
    dir,
    [
      'x-web: &web { command: "node server.js", concurrency: 4 }',
      'apps:',
      '  shop:',
      '    processes:',
      '      web: { <<: *web, instances: 2 }',
    ].join('\n'),
  ).catch((e: unknown) => e);
  // `x-web` is not a config key: anchors must live somewhere valid.
  assert.ok(config instanceof ConfigError);
  assert.deepEqual(config.problems, [{ path: 'x-web', message: 'unknown key' }]);
  const ok = await load(dir, ['apps:', '  shop:', '    processes:', '      web: &web { command: "node server.js", concurrency: 4 }', '      api: { <<: *web, instances: 2 }'].join('\n'));
  assert.deepEqual(ok.apps.shop.processes?.api, { name: 'api', command: 'node server.js', instances: 2, concurrency: 1, http: false, heartbeatTimeoutMs: null, env: {} });
});

test('environments: the chosen section deep-merges; lists and scalars replace', async (t) => {
  const dir = await tempDir(t);
  const text = [
    'listen: ["127.0.0.1:0", "127.0.0.1:1"]',
    'trusted_proxy_count: 0',
    'environments:',
    '  production:',
    '    listen: ["0.0.0.0:0"]',
    '    apps: { shop: { processes: { web: { instances: 4 } } } }',
    'apps:',
    '  shop:',
    '    processes: { web: { command: "node server.js", instances: 1, concurrency: 2 } }',
  ].join('\n');
  const base = await load(dir, text);
  assert.equal(base.environment, null);
  assert.deepEqual(base.listen.map((a) => a.text), ['127.0.0.1:0', '127.0.0.1:1']);
  const prod = await load(dir, text, { env: 'production' });
  assert.equal(prod.environment, 'production');
  assert.deepEqual(prod.listen.map((a) => a.text), ['0.0.0.0:0']);
  assert.deepEqual(prod.apps.shop.processes?.web, { name: 'web', command: 'node server.js', instances: 4, concurrency: 2, http: true, heartbeatTimeoutMs: null, env: {} });
  const viaEnviron = await load(dir, text, { environ: { BERTH_ENV: 'production' } });
  assert.equal(viaEnviron.environment, 'production');
  assert.equal(viaEnviron.apps.shop.processes?.web.instances, 4);
  // --env wins over BERTH_ENV.
  await assert.rejects(load(dir, text, { env: 'staging', environ: { BERTH_ENV: 'production' } }), /unknown environment "staging"/);
});

test('an unknown environment is a problem at `environments`', async (t) => {
  const dir = await tempDir(t);
  assert.deepEqual(await loadProblems(dir, 'environments: { production: {}, development: {} }\n', { env: 'prod' }), [
    'environments: unknown environment "prod" (known: production, development)',
  ]);
  assert.deepEqual(await loadProblems(dir, 'trusted_proxy_count: 1\n', { env: 'prod' }), [
    'environments: unknown environment "prod" (the config defines no environments)',
  ]);
});

test('unknown keys in any environment section are reported at environments.<name>.<key>', async (t) => {
  const dir = await tempDir(t);
  const text = [
    'environments:',
    '  production:',
    '    trusted_proxies: 1',
    '    apps: { shop: { procesess: {} } }',
    '  development:',
    '    reset_sate: true',
    '    environments: {}',
    '  staging: "nope"',
    'apps:',
    '  shop: { processes: { web: { command: "x" } } }',
  ].join('\n');
  // Whatever environment is chosen (or none), every section's unknown keys are found.
  const expected = [
    'environments.development.environments: unknown key',
    'environments.staging: expected a mapping of config keys',
    'environments.development.reset_sate: unknown key',
    'environments.production.apps.shop.procesess: unknown key',
    'environments.production.trusted_proxies: unknown key',
  ];
  assert.deepEqual((await loadProblems(dir, text)).sort(), [...expected].sort());
  assert.deepEqual((await loadProblems(dir, text, { env: 'production' })).sort(), [...expected].sort());
  assert.deepEqual((await loadProblems(dir, text, { env: 'development' })).sort(), [...expected].sort());
});

test('bad values from the chosen environment say where they were set', async (t) => {
  const dir = await tempDir(t);
  const text = ['environments:', '  production:', '    apps: { shop: { processes: { web: { instances: two } } } }', 'apps:', '  shop: { processes: { web: { command: "x" } } }'].join('\n');
  assert.deepEqual(await loadProblems(dir, text, { env: 'production' }), [
    'apps.shop.processes.web.instances: expected a positive integer, got "two" (set in environments.production)',
  ]);
});

test('BERTH_* overrides win over the file and the environment section; values are YAML scalars', async (t) => {
  const dir = await tempDir(t);
  const text = [
    'trusted_proxy_count: 0',
    'environments: { production: { trusted_proxy_count: 1 } }',
    'apps:',
    '  shop-api:',
    '    hosts: [a.test]',
    '    processes: { Web: { command: "node server.js" } }',
  ].join('\n');
  const config = await load(dir, text, {
    env: 'production',
    environ: {
      BERTH_TRUSTED_PROXY_COUNT: '3',
      BERTH_METRICS_PUBLIC: 'true',
      BERTH_DATABASE: '~',
      BERTH_APPS__SHOP_API__PROCESSES__WEB__INSTANCES: '4',
      BERTH_APPS__SHOP_API__PROCESSES__WEB__COMMAND: 'node server.js --mode: fast',
      BERTH_APPS__SHOP_API__HOSTS: '[b.test, c.test]',
      BERTH_APPS__SHOP_API__ENV__NOTE: 'release #42',
      BERTH_APPS__SHOP_API__ROUTES__0__PATH: '/ignored',
    },
  }).catch((e: unknown) => e);
  // routes does not exist, so ROUTES__0 creates a mapping {"0": ...}: a problem naming the variable.
  assert.ok(config instanceof ConfigError);
  assert.deepEqual(config.problems, [{ path: 'apps.shop-api.routes', message: 'expected a list, got a mapping (from BERTH_APPS__SHOP_API__ROUTES__0__PATH)' }]);

  const ok = await load(dir, text, {
    env: 'production',
    environ: {
      BERTH_TRUSTED_PROXY_COUNT: '3',
      BERTH_METRICS_PUBLIC: 'true',
      BERTH_DATABASE: '~',
      BERTH_APPS__SHOP_API__PROCESSES__WEB__INSTANCES: '4',
      BERTH_APPS__SHOP_API__PROCESSES__WEB__COMMAND: 'node server.js --mode: fast',
      BERTH_APPS__SHOP_API__HOSTS: '[b.test, c.test]',
      BERTH_APPS__SHOP_API__ENV__NOTE: 'release #42',
      BERTH_APPS__SHOP_API__ENV__QUOTED: "'4'",
      BERTH_APPS__SHOP_API__ENV__OCTAL: '0123',
      BERTH_APPS__SHOP_API__ENV__EXP: '0123e4',
      BERTH_APPS__SHOP_API__BUILD: '',
    },
  });
  assert.equal(ok.trustedProxyCount, 3);
  assert.equal(ok.apps['shop-api'].build, null, 'an empty value is null: the default applies');
  assert.equal(ok.metricsPublic, true);
  assert.equal(ok.database, null);
  assert.deepEqual(Object.keys(ok.apps['shop-api'].processes ?? {}), ['Web'], 'segments match existing keys case-insensitively');
  assert.equal(ok.apps['shop-api'].processes?.Web.instances, 4);
  assert.equal(ok.apps['shop-api'].processes?.Web.command, 'node server.js --mode: fast', 'text YAML would read as a mapping stays a string');
  assert.deepEqual(ok.apps['shop-api'].hosts, ['b.test', 'c.test']);
  // An app's env value reaches the app exactly as the variable holds it: no YAML reading, quotes kept.
  assert.deepEqual(ok.apps['shop-api'].env, { NOTE: 'release #42', QUOTED: "'4'", OCTAL: '0123', EXP: '0123e4' }, 'env names keep their case, values their text');
});

test('override problems name the variable; variables that are not config keys are ignored', async (t) => {
  const dir = await tempDir(t);
  const text = 'apps:\n  shop: { processes: { web: { command: "x" } } }\n';
  assert.deepEqual(
    await loadProblems(dir, text, {
      environ: {
        BERTH_APPS__SHOP__PROCESSES__WEB__INSTANCES: 'two',
        BERTH_APPS__SHOP__PROCESSES__WEB__COMMAND__ARGS: 'x',
        BERTH_APPS__SHOPP__HOSTS: 'x.test',
        BERTH_APPS____X: '1',
        BERTH_CONFIG: 'elsewhere.yaml',
        BERTH_ENV: '',
        BERTH_TOKEN: 't',
        BERTH_RELEASE: 'r',
        BERTH_SOCKET: '/s',
        BERTH_FASTPURGE_CLIENT_SECRET_PRODUCTION: 's',
        BERTH_NOT_A_KEY__X: '1',
        OTHER: 'x',
      },
    }),
    [
      'apps.shop.processes.web.command: environment variable BERTH_APPS__SHOP__PROCESSES__WEB__COMMAND__ARGS sets a key inside this value, which is not a mapping',
      'environment variable BERTH_APPS____X: empty key between "__" separators',
      'apps.shop.processes.web.instances: expected a positive integer, got "two" (from BERTH_APPS__SHOP__PROCESSES__WEB__INSTANCES)',
    ],
  );
});

/** Escapes a string for use inside a RegExp. */
function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
