/**
 * docs/settings.md, made from the settings catalogue (settings.ts): every key by section, each with its
 * type, default, what a config reload does with it, a description and an example. The page is never
 * edited by hand: test/config/settings-reference.test.ts fails when it differs from what
 * `renderSettingsReference()` makes now, and `npm run docs:settings` (this file run as a script) writes it.
 *
 * What a config reload does with a key is read from src/gateway/reload-plan.ts, the code that decides
 * it, so the page cannot say otherwise. Nothing here runs when berth does: only the script and tests
 * import this file.
 */
import { writeFileSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { parse } from 'yaml';
import { PROCESS_KEYS, RESTART_ONLY_KEYS } from '../gateway/reload-plan.ts';
import { PLACEHOLDERS, SETTINGS_SECTIONS, type Setting } from './settings.ts';

/** Where the page lives in the repository. */
export const SETTINGS_REFERENCE_FILE = resolve(import.meta.dirname, '../../docs/settings.md');
/** The command that writes the page again. */
export const REGENERATE_COMMAND = 'npm run docs:settings';

/** What a config reload (`berth reload-config`, SIGHUP) does when a key changes. */
export type ReloadEffect = 'live' | 'app-reload' | 'restart' | 'start' | 'environment';

const EFFECT_TEXT: Record<ReloadEffect, string> = {
  live: 'applies at once',
  'app-reload': 'reloads the app',
  restart: 'needs a restart',
  start: 'read at start only',
  environment: 'as the keys it sets',
};

/** A key's reload effect: restart-only and process keys as reload-plan.ts lists them, else live. */
export function reloadEffect(setting: Setting): ReloadEffect {
  const path = setting.path;
  if (path.startsWith('environments.')) return 'environment';
  if (RESTART_ONLY_KEYS.some((k) => path === k.path || path.startsWith(`${k.path}.`) || path.startsWith(`${k.path}[]`))) return 'restart';
  if (setting.reload === 'start') return 'start';
  const appKey = /^apps\.<app>\.([a-z_]+)/.exec(path)?.[1];
  if (appKey !== undefined && (PROCESS_KEYS as readonly string[]).includes(appKey)) return 'app-reload';
  return 'live';
}

/**
 * A value as YAML flow text on one line: `[a, b]`, `{ k: v }`, strings plain where YAML reads them back
 * as the same string, else double-quoted.
 */
export function inlineYaml(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'string') return /^[A-Za-z0-9_./][A-Za-z0-9_./@+-]*$/.test(value) && parse(value) === value ? value : JSON.stringify(value);
  if (typeof value !== 'object') return String(value);
  if (Array.isArray(value)) return `[${value.map(inlineYaml).join(', ')}]`;
  const entries = Object.entries(value);
  return entries.length === 0 ? '{}' : `{ ${entries.map(([k, v]) => `${inlineYaml(k)}: ${inlineYaml(v)}`).join(', ')} }`;
}

/** The key a path ends in, as a file writes it: a placeholder becomes its example name. */
function lastKey(path: string): string {
  const last = path.split('.').at(-1)!.replace(/\[\]$/, '');
  return PLACEHOLDERS[last]?.example ?? last;
}

/** GitHub's anchor for a heading. */
function anchor(heading: string): string {
  return heading.toLowerCase().replace(/[^a-z0-9 _-]/g, '').replaceAll(' ', '-');
}

function typeText(s: Setting): string {
  if (s.choices === undefined) return `\`${s.type}\``;
  const options = `\`${s.choices.join(' | ')}\``;
  return Array.isArray(s.example) ? `list of ${options}` : options;
}

/** `**Default** ...`, or `**Required**` for a key that has none. */
function defaultText(s: Setting): string {
  if (s.required) return '**Required**';
  if (s.default !== undefined) return `**Default** \`${inlineYaml(s.default)}\`${s.defaultNote ? ` (${s.defaultNote})` : ''}`;
  return `**Default** ${s.defaultNote ?? 'none'}`;
}

function renderSetting(s: Setting): string[] {
  const example = `\`${lastKey(s.path)}: ${inlineYaml(s.example)}\``;
  const beside = s.exampleWith ? `, beside \`${Object.entries(s.exampleWith).map(([k, v]) => `${k}: ${inlineYaml(v)}`).join(', ')}\`` : '';
  return [
    `### \`${s.path}\``,
    '',
    `**Type** ${typeText(s)} · ${defaultText(s)} · **Config reload** ${EFFECT_TEXT[reloadEffect(s)]}`,
    '',
    s.description,
    '',
    `Example: ${example}${beside}`,
    '',
  ];
}

/** The whole page, as docs/settings.md holds it. Pure. */
export function renderSettingsReference(): string {
  const lines = [
    `> Generated from \`src/config/settings.ts\` by \`${REGENERATE_COMMAND}\`: edit the catalogue, not this page. A test fails when they differ.`,
    '',
    '# berth settings reference',
    '',
    'Every key of `berth.yaml`, by section. [SPEC.md § Config file](SPEC.md#config-file-berthyaml) shows them in one',
    'commented file, with the rules they share; unknown keys are config errors.',
    '',
    '## Reading this page',
    '',
    '- **Paths** are dotted; `[]` is an item of a list. A name in angle brackets is one you choose:',
    ...Object.entries(PLACEHOLDERS).map(([name, p]) => `  - \`${name}\`: ${p.means}.`),
    '- **Types.** A `duration` is `250ms`, `30s`, `5m`, `2h` or `14d` (a bare number is milliseconds), greater than 0',
    '  and at most 24.8 days unless said otherwise. A `size` is `512k`, `10m` or `1g` (binary units), or a number of',
    '  bytes. A `path` is relative to the config file unless said otherwise. A list of strings also takes one bare string.',
    '- **Default**: what applies when the key is left out or set to null; *none*: unset, or off.',
    '- **Config reload** (`berth reload-config`, SIGHUP) of a changed key: *applies at once*; *reloads the app*: its',
    '  processes are replaced with zero downtime; *needs a restart*: the reload is refused and nothing changes;',
    '  *read at start only*: the reload accepts it, and it takes effect at the next start.',
    '- **Environment variables** override any key: `BERTH_` and the path in upper case, `__` between levels',
    '  (`BERTH_APPS__SHOP__PROCESSES__WEB__INSTANCES=4`).',
    '',
    '## Sections',
    '',
    ...SETTINGS_SECTIONS.map((section) => `- [${section.title}](#${anchor(section.title)})`),
    '',
  ];
  for (const section of SETTINGS_SECTIONS) {
    lines.push(`## ${section.title}`, '', section.intro, '');
    for (const s of section.settings) lines.push(...renderSetting(s));
  }
  return lines.join('\n').replace(/\n+$/, '\n');
}

if (import.meta.main) {
  writeFileSync(SETTINGS_REFERENCE_FILE, renderSettingsReference());
  console.log(`wrote ${relative(process.cwd(), SETTINGS_REFERENCE_FILE)}`);
}
