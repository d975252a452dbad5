/**
 * Finds and reads the config file, applies the chosen `environments` section and the `BERTH_*`
 * overrides, then hands the merged object to validate.ts. Merge order (lowest to highest precedence):
 * the YAML file, `environments[<env>]` deep-merged over it (mappings merge, lists and scalars replace),
 * then `BERTH_*` environment variables.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { isMap, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import { ConfigError, errorMessage, type ConfigProblem } from '../lib/errors.ts';
import type { BerthConfig } from './schema.ts';
import { isMapping, put, type ConfigIssue, type KeyPath } from './checker.ts';
import { checkConfig, toProblem, TOP_LEVEL_KEYS } from './validate.ts';

export interface LoadOptions {
  /** --config */
  configPath?: string;
  /** --config-name NAME -> <cwd>/configs/NAME.yaml (else environ.BERTH_CONFIG_NAME) */
  configName?: string;
  /** --env NAME (else environ.BERTH_ENV) */
  env?: string;
  /** Default process.cwd(). */
  cwd?: string;
  /** Default process.env. */
  environ?: Record<string, string | undefined>;
}

/** An override taken from the environment, kept so problems can name the variable that caused them. */
interface Override {
  variable: string;
  at: KeyPath;
  /** The outermost mapping the variable had to create, when its path did not exist yet. */
  created: KeyPath | null;
}

/**
 * Which file: --config, then BERTH_CONFIG, then --config-name (or its env form BERTH_CONFIG_NAME), then
 * ./berth.yaml. Absolute path.
 */
export function resolveConfigPath(opts: LoadOptions): string {
  const cwd = opts.cwd ?? process.cwd();
  const environ = opts.environ ?? process.env;
  if (opts.configPath) return resolve(cwd, opts.configPath);
  if (environ.BERTH_CONFIG) return resolve(cwd, environ.BERTH_CONFIG);
  const name = opts.configName || environ.BERTH_CONFIG_NAME;
  if (name) {
    if (!CONFIG_NAME_RE.test(name)) {
      throw new ConfigError([{ path: '', message: `config name ${JSON.stringify(name)}: expected letters, digits, ".", "_" or "-" (it names configs/<name>.yaml)` }]);
    }
    return resolve(cwd, 'configs', `${name}.yaml`);
  }
  return resolve(cwd, 'berth.yaml');
}

/** A --config-name / BERTH_CONFIG_NAME: a file name under configs/, never a path out of it. */
const CONFIG_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

/** Reads, merges, validates. Throws ConfigError (src/lib/errors.ts) listing EVERY problem as {path, message}. */
export async function loadConfig(opts: LoadOptions): Promise<BerthConfig> {
  const environ = opts.environ ?? process.env;
  const file = resolveConfigPath(opts);
  const raw = await readYaml(file);
  const environment = opts.env || environ.BERTH_ENV || null;

  const issues: ConfigIssue[] = [];
  const top: Record<string, unknown> = { ...raw };
  const sections = takeEnvironments(top, issues);
  let section: Record<string, unknown> = {};
  if (environment !== null) {
    const chosen = sections.get(environment);
    if (chosen !== undefined) section = chosen;
    else {
      const known = sections.size === 0 ? 'the config defines no environments' : `known: ${[...sections.keys()].join(', ')}`;
      issues.push({ at: ['environments'], message: `unknown environment ${JSON.stringify(environment)} (${known})`, unknownKey: false });
    }
  }
  // Unknown keys in the other sections would only show up the day that environment is used: find them now.
  for (const [name, other] of sections) {
    if (name === environment) continue;
    const { issues: found } = checkConfig(deepMerge(top, other), { file, environment: name });
    for (const issue of found) if (issue.unknownKey && lookup(other, issue.at).found) issues.push({ ...issue, at: ['environments', name, ...issue.at] });
  }

  // A copy: overrides write into nested mappings that deepMerge shares with the file's tree.
  const merged = structuredClone(deepMerge(top, section));
  const overrides = applyOverrides(merged, environ, issues);
  const result = checkConfig(merged, { file, environment: environment !== null && sections.has(environment) ? environment : null });
  for (const issue of result.issues) issues.push(...attribute(issue, { top, environment, section, overrides }));
  if (issues.length > 0) throw new ConfigError(issues.map(toProblem));
  return result.config;
}

/** The parsed top-level mapping of a YAML file. An empty file is an empty mapping. */
async function readYaml(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : errorMessage(err);
    throw new ConfigError([{ path: '', message: `cannot read config file ${file}: ${why}` }], { cause: err });
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, merge: true, prettyErrors: false });
  if (doc.errors.length > 0) {
    const problems: ConfigProblem[] = doc.errors.map((e) => {
      const { line, col } = lineCounter.linePos(e.pos[0]);
      return { path: '', message: `${file}:${line}:${col}: YAML syntax error: ${e.message}` };
    });
    throw new ConfigError(problems, { cause: doc.errors[0] });
  }
  keepEnvText(doc);
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (err) {
    throw new ConfigError([{ path: '', message: `${file}: cannot read YAML: ${errorMessage(err)}` }], { cause: err });
  }
  if (value === null || value === undefined) return {};
  if (!isMapping(value)) {
    const kind = Array.isArray(value) ? 'a list' : `a ${typeof value}`;
    throw new ConfigError([{ path: '', message: `${file}: the top level must be a mapping of keys, got ${kind}` }]);
  }
  return value;
}

/**
 * App `env` values reach the app exactly as written: a plain scalar YAML would read as a number or a
 * boolean (`0123`, `0x1F`, `1.50`, `1e3`, `yes`) keeps its source text. Null (`~`, empty) stays null ("").
 * Covers `apps.<app>.env`, `apps.<app>.processes.<type>.env`, and the same under `environments.<name>`.
 */
function keepEnvText(doc: Document): void {
  const child = (node: unknown, key: string): unknown => (isMap(node) ? node.get(key, true) : undefined);
  const eachValue = (node: unknown, fn: (value: unknown) => void): void => {
    if (isMap(node)) for (const pair of node.items) fn(pair.value);
  };
  const keepMap = (env: unknown): void =>
    eachValue(env, (v) => {
      if (isScalar(v) && v.type === 'PLAIN' && v.value !== null && typeof v.value !== 'string' && typeof v.source === 'string') v.value = v.source;
    });
  const apps = (top: unknown): void =>
    eachValue(child(top, 'apps'), (app) => {
      keepMap(child(app, 'env'));
      eachValue(child(app, 'processes'), (proc) => keepMap(child(proc, 'env')));
    });
  apps(doc.contents);
  eachValue(child(doc.contents, 'environments'), apps);
}

/** Removes `environments` from the top level and returns its sections; bad sections become issues. */
function takeEnvironments(top: Record<string, unknown>, issues: ConfigIssue[]): Map<string, Record<string, unknown>> {
  const sections = new Map<string, Record<string, unknown>>();
  const value = top.environments;
  delete top.environments;
  if (value === undefined || value === null) return sections;
  if (!isMapping(value)) {
    issues.push({ at: ['environments'], message: 'expected a mapping of environment names to config keys', unknownKey: false });
    return sections;
  }
  for (const [name, section] of Object.entries(value)) {
    if (section === null || section === undefined) {
      sections.set(name, {});
    } else if (!isMapping(section)) {
      issues.push({ at: ['environments', name], message: 'expected a mapping of config keys', unknownKey: false });
      sections.set(name, {});
    } else {
      if ('environments' in section) issues.push({ at: ['environments', name, 'environments'], message: 'unknown key', unknownKey: true });
      const { environments: _, ...rest } = section;
      sections.set(name, rest);
    }
  }
  return sections;
}

/** Mappings merge key by key; lists, scalars and null replace. Neither input is modified. */
function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const prev = out[key];
    put(out, key, isMapping(prev) && isMapping(value) ? deepMerge(prev, value) : value);
  }
  return out;
}

/**
 * Applies `BERTH_A__B__C=value` overrides in place. Only variables whose first segment names a top-level
 * key count; the others (BERTH_CONFIG, BERTH_ENV, BERTH_TOKEN, ...) belong to someone else.
 */
function applyOverrides(target: Record<string, unknown>, environ: Record<string, string | undefined>, issues: ConfigIssue[]): Override[] {
  const overrides: Override[] = [];
  // Sorted so a whole-key override (BERTH_APPS) applies before the deeper ones (BERTH_APPS__SHOP__...).
  const names = Object.keys(environ).filter((n) => n.startsWith('BERTH_')).sort();
  for (const variable of names) {
    const text = environ[variable];
    if (text === undefined) continue;
    const segments = variable.slice('BERTH_'.length).split('__');
    if (!(TOP_LEVEL_KEYS as readonly string[]).includes(segments[0].toLowerCase())) continue;
    if (segments.some((s) => s === '')) {
      issues.push({ at: [], message: `environment variable ${variable}: empty key between "__" separators`, unknownKey: false });
      continue;
    }
    const at: (string | number)[] = [];
    let node: Record<string, unknown> | unknown[] = target;
    let ok = true;
    let created: KeyPath | null = null;
    for (let i = 0; i < segments.length; i++) {
      // App `env` names are the app's own environment variables: keep the case they are written in.
      const keepCase = isEnvValue([...at, segments[i]]);
      const key = matchKey(node, segments[i], keepCase);
      if (key === null) {
        issues.push({ at: [...at], message: `environment variable ${variable}: ${JSON.stringify(segments[i])} is not an index of this list`, unknownKey: false });
        ok = false;
        break;
      }
      at.push(key);
      if (i === segments.length - 1) {
        // An app's env value reaches the app exactly as written: `0123e4` stays "0123e4".
        setChild(node, key, isEnvValue(at) ? text : parseScalar(text));
        break;
      }
      let child: unknown = Array.isArray(node) ? node[key as number] : Object.hasOwn(node, key) ? node[key] : undefined;
      if (child === undefined || child === null) {
        child = {};
        setChild(node, key, child);
        created ??= [...at];
      }
      if (!isMapping(child) && !Array.isArray(child)) {
        issues.push({ at: [...at], message: `environment variable ${variable} sets a key inside this value, which is not a mapping`, unknownKey: false });
        ok = false;
        break;
      }
      node = child;
    }
    if (ok) overrides.push({ variable, at, created });
  }
  return overrides;
}

/**
 * The existing key a variable segment names, else the segment lower-cased. Keys match case-insensitively,
 * and `_` in the segment also matches `-` in the key, since shells cannot export names with `-`
 * (BERTH_APPS__MY_SHOP__... reaches app `my-shop`). In a list, a segment is an index (up to the length,
 * to append); null when it is not.
 */
function matchKey(node: Record<string, unknown> | unknown[], segment: string, keepCase: boolean): string | number | null {
  if (Array.isArray(node)) return /^\d+$/.test(segment) && Number(segment) <= node.length ? Number(segment) : null;
  if (Object.hasOwn(node, segment)) return segment;
  const lower = segment.toLowerCase();
  if (Object.hasOwn(node, lower)) return lower;
  const keys = Object.keys(node);
  return keys.find((k) => k.toLowerCase() === lower) ?? keys.find((k) => k.toLowerCase().replaceAll('-', '_') === lower) ?? (keepCase ? segment : lower);
}

/** `apps.<app>.env.<NAME>` or `apps.<app>.processes.<type>.env.<NAME>`. */
function isEnvValue(at: KeyPath): boolean {
  if (at[0] !== 'apps') return false;
  return (at.length === 4 && at[2] === 'env') || (at.length === 6 && at[2] === 'processes' && at[4] === 'env');
}

function setChild(node: Record<string, unknown> | unknown[], key: string | number, value: unknown): void {
  if (Array.isArray(node)) node[key as number] = value;
  else put(node, String(key), value);
}

/**
 * An override value read as a YAML scalar: "4" -> 4, "true" -> true, "[a, b]" -> a list, "~" -> null,
 * a quoted string -> its content. Any other text stays exactly as given, even where YAML would read a
 * block mapping, a list item or a comment into it: `run --opt: 1` or `release #42` mean what they say.
 */
function parseScalar(text: string): unknown {
  const trimmed = text.trim();
  const doc = parseDocument(text, { prettyErrors: false });
  if (doc.errors.length > 0) return text;
  const value: unknown = doc.toJS();
  if (typeof value === 'string') return trimmed.startsWith('"') || trimmed.startsWith("'") ? value : text;
  if (isMapping(value)) return trimmed.startsWith('{') ? value : text;
  if (Array.isArray(value)) return trimmed.startsWith('[') ? value : text;
  if (value === null) return ['', '~', 'null', 'Null', 'NULL'].includes(trimmed) ? null : text;
  return value;
}

/**
 * The value at `at` in a raw config tree. `found` is also true when a scalar or list sits on the way:
 * the problem then lies inside a value that tree wrote whole.
 */
function lookup(tree: Record<string, unknown>, at: KeyPath): { found: boolean; value: unknown } {
  let node: unknown = tree;
  for (const key of at) {
    if (isMapping(node)) {
      if (!Object.hasOwn(node, String(key))) return { found: false, value: undefined };
      node = node[String(key)];
    } else {
      return { found: true, value: node };
    }
  }
  return { found: true, value: node };
}

/**
 * Names where a problem came from: a BERTH_* variable, or the chosen environment section. Unknown keys
 * written in the section are reported at `environments.<name>.<key>`.
 */
function attribute(
  issue: ConfigIssue,
  from: { top: Record<string, unknown>; environment: string | null; section: Record<string, unknown>; overrides: Override[] },
): ConfigIssue[] {
  const override = from.overrides.findLast((o) => isPrefix(o.at, issue.at) || (o.created !== null && isPrefix(o.created, issue.at)));
  if (override) return [{ ...issue, message: `${issue.message} (from ${override.variable})` }];
  if (from.environment === null || issue.at.length === 0) return [issue];
  const inSection = lookup(from.section, issue.at);
  if (!inSection.found) return [issue];
  if (issue.unknownKey) {
    const moved = { ...issue, at: ['environments', from.environment, ...issue.at] };
    return lookup(from.top, issue.at).found ? [issue, moved] : [moved];
  }
  // A mapping in the section merged with the file's: only a value the section replaced whole is its own.
  if (isMapping(inSection.value) && lookup(from.top, issue.at).found) return [issue];
  return [{ ...issue, message: `${issue.message} (set in environments.${from.environment})` }];
}

function isPrefix(prefix: KeyPath, path: KeyPath): boolean {
  return prefix.length <= path.length && prefix.every((k, i) => String(k) === String(path[i]));
}
