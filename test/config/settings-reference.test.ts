/**
 * The settings catalogue (src/config/settings.ts) against the validator and the page made from it:
 * docs/settings.md is what the generator makes now; every catalogued key, written with its example,
 * its choices or its default, loads as documented; and the validator cannot read a key the catalogue
 * does not list.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.ts';
import { checkConfig } from '../../src/config/validate.ts';
import { Checker, Fields, isMapping } from '../../src/config/checker.ts';
import { isSettingPath, PLACEHOLDERS, SETTINGS, type Setting } from '../../src/config/settings.ts';
import { inlineYaml, REGENERATE_COMMAND, renderSettingsReference, SETTINGS_REFERENCE_FILE } from '../../src/config/settings-reference.ts';
import { PROCESS_KEYS, RESTART_ONLY_KEYS } from '../../src/gateway/reload-plan.ts';
import { BerthError, ConfigError, ErrorCodes } from '../../src/lib/errors.ts';

/**
 * What every key is loaded beside: a TLS listener with certificates (for `https_redirect`, `tls.acme`),
 * a cleartext one (for ACME's http-01), and an app with an exact host (for `canonical_host` and listed
 * certificates). Nothing in it is read from disk at load.
 */
const BASE: Record<string, unknown> = {
  listen: ['127.0.0.1:0', { address: '127.0.0.1:0', tls: true }],
  tls: { directory: 'certs' },
  apps: { shop: { hosts: ['shop.example.com'] } },
};

const ABSENT = Symbol('absent');

/** The path's mapping one level up, as the catalogue writes it (`apps.<app>.routes[]`). */
function parentOf(path: string): string {
  return path.split('.').slice(0, -1).join('.');
}

/** The key a path segment is written as: a placeholder becomes its example name. */
function keyOf(segment: string): string {
  const name = segment.replace(/\[\]$/, '');
  return PLACEHOLDERS[name]?.example ?? name;
}

/** The segments of the concrete key a path names (placeholders named, each list at its item 0). */
function concrete(path: string): (string | number)[] {
  return path.split('.').flatMap((segment) => (segment.endsWith('[]') ? [keyOf(segment), 0] : [keyOf(segment)]));
}

/**
 * A config tree holding `setting` set to `value` (or not set, for ABSENT), with each mapping on the way
 * holding its required keys and, beside the key, its `exampleWith`, all at their examples.
 */
function instantiate(setting: Setting, value: unknown): Record<string, unknown> {
  const parts = setting.path.split('.');
  const root: Record<string, unknown> = {};
  let node = root;
  let section = '';
  parts.forEach((part, i) => {
    for (const s of SETTINGS) if (s.required && parentOf(s.path) === section && s.path !== setting.path) node[keyOf(s.path.split('.').at(-1)!)] = s.example;
    const path = section === '' ? part : `${section}.${part}`;
    if (i === parts.length - 1) {
      Object.assign(node, setting.exampleWith ?? {});
      if (value !== ABSENT) node[keyOf(part)] = value;
      return;
    }
    const child: Record<string, unknown> = {};
    node[keyOf(part)] = part.endsWith('[]') ? [child] : child;
    node = child;
    section = path;
  });
  return root;
}

/** Mappings merge key by key; anything else in `over` replaces. */
function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) out[key] = isMapping(out[key]) && isMapping(value) ? merge(out[key], value) : value;
  return out;
}

/** A copy of `tree` without the key at `at`. */
function without(tree: Record<string, unknown>, at: (string | number)[]): Record<string, unknown> {
  const copy = structuredClone(tree);
  let node: unknown = copy;
  for (const key of at.slice(0, -1)) node = (node as Record<string | number, unknown>)[key];
  delete (node as Record<string | number, unknown>)[at.at(-1)!];
  return copy;
}

/** Whether a problem's path is the key's own or lies under it. */
function about(problemPath: string, at: (string | number)[]): boolean {
  const key = at.join('.');
  return problemPath === key || problemPath.startsWith(`${key}.`);
}

/** The problems loadConfig reports for `raw`, written to a file in `dir`, as `path: message`. */
async function loadProblems(dir: string, raw: Record<string, unknown>): Promise<{ path: string; message: string }[]> {
  const configPath = join(dir, 'berth.yaml');
  await writeFile(configPath, stringify(raw));
  try {
    await loadConfig({ configPath, environ: {} });
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err.problems;
  }
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-settings-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('docs/settings.md is what the settings catalogue makes', async () => {
  const expected = renderSettingsReference();
  const actual = await readFile(SETTINGS_REFERENCE_FILE, 'utf8').catch(() => '');
  if (actual === expected) return;
  const a = actual.split('\n');
  const e = expected.split('\n');
  const line = e.findIndex((text, i) => a[i] !== text);
  const at = line < 0 ? a.length : line;
  assert.fail(
    `docs/settings.md differs from src/config/settings.ts at line ${at + 1}: run \`${REGENERATE_COMMAND}\` and commit the page.\n` +
      `  page:      ${JSON.stringify(a[at] ?? '(end of file)')}\n  generated: ${JSON.stringify(e[at] ?? '(end of file)')}`,
  );
});

test('the page starts by saying it is generated, and how to make it again', () => {
  const first = renderSettingsReference().split('\n')[0];
  assert.match(first, /Generated from `src\/config\/settings\.ts`/);
  assert.ok(first.includes(REGENERATE_COMMAND));
});

test('every catalogued key, written with its example, loads without a problem about it', async (t) => {
  const dir = await tempDir(t);
  const failures: string[] = [];
  for (const s of SETTINGS) {
    const at = concrete(s.path);
    for (const p of await loadProblems(dir, merge(BASE, instantiate(s, s.example)))) {
      if (about(p.path, at)) failures.push(`${s.path} = ${inlineYaml(s.example)}: ${p.path}: ${p.message}`);
    }
  }
  assert.deepEqual(failures, []);
});

test('every choice is accepted, and anything else is refused naming exactly those choices', async (t) => {
  const dir = await tempDir(t);
  const failures: string[] = [];
  const choiceSettings = SETTINGS.filter((s) => s.choices !== undefined);
  assert.ok(choiceSettings.length >= 5, `only ${choiceSettings.length} keys with choices`);
  for (const s of choiceSettings) {
    const at = concrete(s.path);
    const asWritten = (v: string) => (Array.isArray(s.example) ? [v] : v);
    for (const choice of s.choices!) {
      for (const p of await loadProblems(dir, merge(BASE, instantiate(s, asWritten(choice))))) {
        if (about(p.path, at)) failures.push(`${s.path} = ${choice}: ${p.path}: ${p.message}`);
      }
    }
    const refused = (await loadProblems(dir, merge(BASE, instantiate(s, asWritten('not-a-choice'))))).filter((p) => about(p.path, at));
    const expected = `expected one of ${s.choices!.join(', ')}, got "not-a-choice"`;
    if (!refused.some((p) => p.message === expected)) failures.push(`${s.path} = not-a-choice: wanted "${expected}", got ${JSON.stringify(refused)}`);
  }
  assert.deepEqual(failures, []);
});

test('writing a documented default gives the same config as leaving the key out', async (t) => {
  const dir = await tempDir(t);
  const ctx = { file: join(dir, 'berth.yaml'), environment: null };
  const failures: string[] = [];
  const withDefaults = SETTINGS.filter((s) => s.default !== undefined);
  assert.ok(withDefaults.length >= 60, `only ${withDefaults.length} keys with a default`);
  for (const s of withDefaults) {
    const at = concrete(s.path);
    const written = merge(BASE, instantiate(s, s.default));
    const left = without(written, at);
    const a = checkConfig(written, ctx);
    const b = checkConfig(left, ctx);
    for (const issue of a.issues) if (about(issue.at.join('.'), at)) failures.push(`${s.path} = ${inlineYaml(s.default)}: ${issue.at.join('.')}: ${issue.message}`);
    if (JSON.stringify(a.config) !== JSON.stringify(b.config)) failures.push(`${s.path}: writing ${inlineYaml(s.default)} changes the config`);
  }
  assert.deepEqual(failures, []);
});

test('the catalogue is well formed: unique paths, known placeholders, values the page shows as they are', () => {
  const seen = new Set<string>();
  for (const s of SETTINGS) {
    assert.ok(!seen.has(s.path), `${s.path} is listed twice`);
    seen.add(s.path);
    for (const segment of s.path.split('.')) {
      assert.match(segment, /^(?:[a-z_]+(?:\[\])?|<[A-Za-z]+>)$/, `${s.path}: segment ${segment}`);
      if (segment.startsWith('<')) assert.ok(PLACEHOLDERS[segment], `${s.path}: ${segment} is not in PLACEHOLDERS`);
    }
    assert.ok(!(s.required && (s.default !== undefined || s.defaultNote !== undefined)), `${s.path}: required, and with a default`);
    assert.ok(s.description.trim().length > 0, `${s.path}: no description`);
    for (const value of [s.example, ...(s.default === undefined ? [] : [s.default]), ...Object.values(s.exampleWith ?? {})]) {
      assert.deepEqual(parse(inlineYaml(value)), value, `${s.path}: ${inlineYaml(value)} does not read back as written`);
    }
  }
});

test('the keys reload-plan.ts names are catalogued, so the page says what a reload does with them', () => {
  for (const key of RESTART_ONLY_KEYS) assert.ok(isSettingPath(key.path), `RESTART_ONLY_KEYS: ${key.path}`);
  for (const key of PROCESS_KEYS) assert.ok(isSettingPath(`apps.<app>.${key}`), `PROCESS_KEYS: ${key}`);
  const page = renderSettingsReference();
  assert.match(page, /### `control\.socket`\n\n[^\n]*\*\*Config reload\*\* needs a restart/);
  assert.match(page, /### `apps\.<app>\.processes\.<type>\.instances`\n\n[^\n]*\*\*Config reload\*\* reloads the app/);
  assert.match(page, /### `apps\.<app>\.routes\[\]\.buffering`\n\n[^\n]*\*\*Config reload\*\* applies at once/);
});

test('the validator cannot read a key the catalogue does not list; a user writing one gets "unknown key"', async (t) => {
  const c = new Checker();
  const internal = (err: unknown) => err instanceof BerthError && err.code === ErrorCodes.internal && /not listed in src\/config\/settings\.ts/.test(err.message);
  const top = new Fields(c, { state_dir: 'x' }, [], '');
  assert.equal(top.take('state_dir'), 'x');
  assert.throws(() => top.take('no_such_key'), internal);
  assert.throws(() => top.raw('no_such_key'), internal);
  assert.throws(() => top.fields('apps').take('hosts'), internal, 'apps holds app names, not keys');
  assert.throws(() => new Fields(c, {}, ['apps', 'shop'], 'apps.<app>.no_such_section'), internal);
  assert.equal(new Fields(c, {}, ['apps', 'shop', 'routes', 0], 'apps.<app>.routes[]').take('buffering'), undefined);

  const dir = await tempDir(t);
  const problems = await loadProblems(dir, { no_such_key: 1, apps: { shop: { routes: [{ path: '/', to: 'web', no_such_key: 1 }] } } });
  assert.deepEqual(
    problems.filter((p) => p.message === 'unknown key').map((p) => p.path),
    ['no_such_key', 'apps.shop.routes.0.no_such_key'],
  );
});
