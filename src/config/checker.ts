/**
 * The checker that config validation reports through: it walks the raw YAML mapping a key at a time,
 * checks each value's type and range, and collects every problem at its dotted key path instead of
 * stopping at the first. validate.ts and app-checks.ts say what the keys are; this file says how a key
 * is read (strings, numbers, durations, sizes, lists, cron, user names) and how a problem is worded.
 * Every key read must be one the settings catalogue (settings.ts) lists, so docs/settings.md, which is
 * made from it, names every key the validator accepts.
 */
import { isAbsolute, posix } from 'node:path';
import { Cron } from 'croner';
import { formatDuration, parseDuration } from '../lib/durations.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { parseSize } from '../lib/sizes.ts';
import { MAX_TIMER_MS } from './schema.ts';
import { isSettingPath, isSettingSection } from './settings.ts';

/** A key path: mapping keys and list indexes, printed joined by dots. */
/** An http(s) URL without credentials (they would be logged and shown wherever the URL is). */
export function isHttpUrl(text: string): boolean {
  try {
    const u = new URL(text);
    return (u.protocol === 'https:' || u.protocol === 'http:') && u.username === '' && u.password === '';
  } catch {
    return false;
  }
}

/** An HTTP header name (RFC 9110 token). */
export const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

export type KeyPath = readonly (string | number)[];

/** One problem, with its path as segments so callers can re-attribute it (load.ts does, for environments). */
export interface ConfigIssue {
  at: KeyPath;
  message: string;
  /** True for a key the schema does not know. */
  unknownKey: boolean;
}

/** An OS user or group name (POSIX portable names, as useradd accepts them), or a numeric id. */
const OS_NAME_RE = /^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|\d{1,10})$/;

// ---- the checker ------------------------------------------------------------------------------

/** Collects issues; its value checks report at a path and return undefined for a bad value. */
export class Checker {
  readonly issues: ConfigIssue[] = [];

  problem(at: KeyPath, message: string, unknownKey = false): void {
    this.issues.push({ at, message, unknownKey });
  }

  /** The mapping at `at`, whose keys the catalogue lists under `section` (`apps.<app>.routes[]`). */
  fields(value: unknown, at: KeyPath, section: string): Fields {
    if (isMapping(value)) return new Fields(this, value, at, section);
    this.problem(at, `expected a mapping of keys, got ${show(value)}`);
    return new Fields(this, {}, at, section);
  }

  string(value: unknown, at: KeyPath): string | undefined {
    if (typeof value === 'string' && value.trim() !== '') return value;
    this.problem(at, typeof value === 'string' ? 'expected a non-empty string' : `expected a string, got ${show(value)}`);
    return undefined;
  }

  int(value: unknown, at: KeyPath, min: 0 | 1): number | undefined {
    if (typeof value === 'number' && Number.isSafeInteger(value) && value >= min) return value;
    if (min === 0 && typeof value === 'number' && Number.isSafeInteger(value)) this.problem(at, `expected a positive integer or 0, got ${show(value)}`);
    else this.problem(at, `expected a positive integer, got ${show(value)}`);
    return undefined;
  }

  /** `maxMs` defaults to Node's timer limit: a longer timer would fire at once (about every 1 ms). */
  duration(value: unknown, at: KeyPath, allowZero = false, maxMs = MAX_TIMER_MS): number | undefined {
    const ms = parseDuration(value);
    if (ms === null) this.problem(at, `expected a duration such as 250ms, 30s, 5m, 2h or 14d, got ${show(value)}`);
    else if (ms < 0 || (ms === 0 && !allowZero)) this.problem(at, `expected a duration greater than 0, got ${show(value)}`);
    else if (ms > maxMs) this.problem(at, `expected a duration of at most ${formatDuration(Math.floor(maxMs / 60_000) * 60_000)} (the longest timer Node can set, about 24.8 days), got ${show(value)}`);
    else return ms;
    return undefined;
  }

  size(value: unknown, at: KeyPath, min: 0 | 1): number | undefined {
    const bytes = parseSize(value);
    if (bytes === null) this.problem(at, `expected a size such as 512k, 10m or 1g (or a number of bytes), got ${show(value)}`);
    else if (bytes < min) this.problem(at, `expected a size greater than 0, got ${show(value)}`);
    else return bytes;
    return undefined;
  }

  /** A user or group name as the OS knows it, or a numeric id. Whether it exists is checked at use. */
  osName(value: unknown, at: KeyPath): string | undefined {
    const text = typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? String(value) : this.string(value, at);
    if (text === undefined) return undefined;
    if (OS_NAME_RE.test(text)) return text;
    this.problem(at, `expected a user or group name (letters, digits, "_", "-", "."), or a numeric id, got ${show(text)}`);
    return undefined;
  }

  cron(value: unknown, at: KeyPath): string | undefined {
    const expr = this.string(value, at);
    if (expr === undefined) return undefined;
    try {
      new Cron(expr, { paused: true }).stop();
      return expr;
    } catch (err) {
      const why = err instanceof Error ? err.message.replace(/^CronPattern:\s*/, '') : String(err);
      this.problem(at, `expected a cron expression with 5 or 6 fields, got ${show(expr)}: ${why}`);
      return undefined;
    }
  }

  /** A list of strings; one bare string counts as a one-element list. */
  strings(value: unknown, at: KeyPath): string[] | undefined {
    if (typeof value === 'string') return this.string(value, at) === undefined ? [] : [value];
    if (!Array.isArray(value)) {
      this.problem(at, `expected a list of strings, got ${show(value)}`);
      return undefined;
    }
    return value.flatMap((item, i) => this.string(item, [...at, i]) ?? []);
  }

  /** A list of regular expression sources (or one bare string), each of which must compile. */
  regexList(value: unknown, at: KeyPath): string[] {
    if (value === null || value === undefined) return [];
    if (typeof value === 'string') {
      const source = this.regex(value, at);
      return source === undefined ? [] : [source];
    }
    if (!Array.isArray(value)) {
      this.problem(at, `expected a list of regular expressions, got ${show(value)}`);
      return [];
    }
    return value.flatMap((item, i) => this.regex(item, [...at, i]) ?? []);
  }

  regex(value: unknown, at: KeyPath): string | undefined {
    const source = this.string(value, at);
    if (source === undefined) return undefined;
    try {
      new RegExp(source);
      return source;
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      this.problem(at, `expected a regular expression, got ${show(source)}: ${why}`);
      return undefined;
    }
  }

  /** A route-like path: starts with `/`; trailing slashes are dropped except for `/` itself. */
  routePath(value: unknown, at: KeyPath): string | undefined {
    const text = this.string(value, at);
    if (text === undefined) return undefined;
    if (!text.startsWith('/') || /[\s?#]/.test(text)) {
      this.problem(at, `expected a path starting with "/", got ${show(text)}`);
      return undefined;
    }
    const trimmed = text.replace(/\/+$/, '');
    return trimmed === '' ? '/' : trimmed;
  }

  /** A path inside the release: relative, without `..` segments; normalised without `./` or a trailing `/`. */
  releasePath(value: unknown, at: KeyPath): string | undefined {
    const text = this.string(value, at);
    if (text === undefined) return undefined;
    if (isAbsolute(text) || posix.isAbsolute(text) || text.split(/[\\/]/).includes('..')) {
      this.problem(at, `expected a relative path inside the release, without "..", got ${show(text)}`);
      return undefined;
    }
    return posix.normalize(text).replace(/\/+$/, '') || '.';
  }
}

/**
 * One mapping being read: each key read is marked known, and `done()` reports the rest as unknown.
 * It knows its place in the settings catalogue (`section`: `''` for the top level, `apps.<app>`,
 * `apps.<app>.routes[]`...), and reading a key the catalogue does not list there throws an internal
 * error: a programming error that the config tests, which read every key, find at once.
 */
export class Fields {
  readonly #c: Checker;
  readonly #obj: Record<string, unknown>;
  readonly #at: KeyPath;
  readonly #section: string;
  readonly #seen = new Set<string>();

  constructor(checker: Checker, obj: Record<string, unknown>, at: KeyPath, section: string) {
    if (section !== '' && !isSettingSection(section)) throw notCatalogued(section);
    this.#c = checker;
    this.#obj = obj;
    this.#at = at;
    this.#section = section;
  }

  /** The catalogue path of `key` in this mapping (`apps.<app>.routes`); throws for a key it does not list. */
  setting(key: string): string {
    const path = this.#section === '' ? key : `${this.#section}.${key}`;
    if (!isSettingPath(path)) throw notCatalogued(path);
    return path;
  }

  path(key: string): KeyPath {
    return [...this.#at, key];
  }

  /** The path of item `i` of a string list, or of the key itself when it was written as one bare string. */
  listItemPath(key: string, i: number): KeyPath {
    return typeof this.raw(key) === 'string' ? this.path(key) : [...this.path(key), i];
  }

  /** The value without marking the key; undefined when missing or null. */
  raw(key: string): unknown {
    this.setting(key);
    const v = Object.hasOwn(this.#obj, key) ? this.#obj[key] : undefined;
    return v === null ? undefined : v;
  }

  /** The value, marking the key known. */
  take(key: string): unknown {
    this.#seen.add(key);
    return this.raw(key);
  }

  done(): void {
    for (const key of Object.keys(this.#obj)) {
      if (!this.#seen.has(key)) this.#c.problem(this.path(key), 'unknown key', true);
    }
  }

  /** Every key of this mapping as an entry, all marked known (for mappings keyed by user-chosen names). */
  allEntries(): [string, unknown][] {
    for (const key of Object.keys(this.#obj)) this.#seen.add(key);
    return Object.entries(this.#obj);
  }

  #read<T>(key: string, check: (value: unknown, at: KeyPath) => T | undefined): T | undefined {
    const v = this.take(key);
    return v === undefined ? undefined : check(v, this.path(key));
  }

  string(key: string): string | undefined {
    return this.#read(key, (v, at) => this.#c.string(v, at));
  }

  int(key: string, min: 0 | 1): number | undefined {
    return this.#read(key, (v, at) => this.#c.int(v, at, min));
  }

  duration(key: string, allowZero = false, maxMs?: number): number | undefined {
    return this.#read(key, (v, at) => this.#c.duration(v, at, allowZero, maxMs));
  }

  size(key: string, min: 0 | 1 = 0): number | undefined {
    return this.#read(key, (v, at) => this.#c.size(v, at, min));
  }

  osName(key: string): string | undefined {
    return this.#read(key, (v, at) => this.#c.osName(v, at));
  }

  cron(key: string): string | undefined {
    return this.#read(key, (v, at) => this.#c.cron(v, at));
  }

  bool(key: string): boolean | undefined {
    return this.#read(key, (v, at) => {
      if (typeof v === 'boolean') return v;
      this.#c.problem(at, `expected true or false, got ${show(v)}`);
      return undefined;
    });
  }

  choice<T extends string>(key: string, options: readonly T[]): T | undefined {
    return this.#read(key, (v, at) => {
      if (typeof v === 'string' && options.includes(v as T)) return v as T;
      this.#c.problem(at, `expected one of ${options.join(', ')}, got ${show(v)}`);
      return undefined;
    });
  }

  strings(key: string): string[] | undefined {
    return this.#read(key, (v, at) => this.#c.strings(v, at));
  }

  regexes(key: string): string[] {
    return this.#read(key, (v, at) => this.#c.regexList(v, at)) ?? [];
  }

  routePath(key: string, required: boolean): string | undefined {
    if (required && this.raw(key) === undefined) this.#c.problem(this.path(key), 'required');
    return this.#read(key, (v, at) => this.#c.routePath(v, at));
  }

  /** An HTTP path probed as written (a trailing `/` or a query may matter to the app). */
  probePath(key: string): string | undefined {
    return this.#read(key, (v, at) => {
      const text = this.#c.string(v, at);
      if (text === undefined) return undefined;
      if (text.startsWith('/') && !/\s/.test(text)) return text;
      this.#c.problem(at, `expected a path starting with "/", got ${show(text)}`);
      return undefined;
    });
  }

  releasePath(key: string): string | null {
    return this.#read(key, (v, at) => this.#c.releasePath(v, at)) ?? null;
  }

  list(key: string): unknown[] | undefined {
    return this.#read(key, (v, at) => {
      if (Array.isArray(v)) return v;
      this.#c.problem(at, `expected a list, got ${show(v)}`);
      return undefined;
    });
  }

  /** A sub-mapping; missing gives an empty one, so its defaults apply. */
  /** The mapping at `key`, or null when the key is not set (an optional section); marked known either way. */
  section(key: string): Fields | null {
    if (this.raw(key) === undefined) {
      this.take(key);
      return null;
    }
    return this.fields(key);
  }

  fields(key: string): Fields {
    const v = this.take(key);
    return v === undefined ? new Fields(this.#c, {}, this.path(key), this.setting(key)) : this.#c.fields(v, this.path(key), this.setting(key));
  }

  /** The entries of a mapping keyed by user-chosen names (apps, processes, users, ...). */
  entries(key: string): [string, unknown][] {
    const v = this.take(key);
    if (v === undefined) return [];
    if (!isMapping(v)) {
      this.#c.problem(this.path(key), `expected a mapping of keys, got ${show(v)}`);
      return [];
    }
    return Object.entries(v);
  }
}

// ---- helpers ----------------------------------------------------------------------------------

/** The internal error for a key (or a mapping of keys) that the validator reads and settings.ts does not list. */
function notCatalogued(path: string): BerthError {
  return new BerthError(ErrorCodes.internal, `config key ${path} is read by the validator but not listed in src/config/settings.ts: add it there, then run npm run docs:settings`);
}

/** A plain mapping (not a list, not null). */
export function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Sets a key as an own data property. Plain assignment of a user-written `__proto__` key would replace
 * the object's prototype instead of adding a key that validation can report.
 */
export function put(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** A value as problem messages quote it: strings in JSON quotes, lists and mappings by kind. */
export function show(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return String(value);
}

export function isTimeZone(name: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: name });
    return true;
  } catch {
    return false;
  }
}
