/**
 * Redaction of secrets carried in URLs (deploy sources such as `https://user:token@host/repo.git#main`
 * or `https://host/repo.git?private_token=...`). Whatever berth writes or returns about a source (logs,
 * deploy records and events, release rows, the audit log, API answers) goes through here; the deployer
 * alone keeps the real URL, to fetch with.
 *
 * The choice: the whole userinfo becomes `***` (`https://***@host/repo.git`), because a token is as
 * often the user name (`https://<token>@github.com/...`) as the password, and a query parameter whose
 * name looks like a credential keeps its name and loses its value (`?private_token=***`). The host, path
 * and `#ref` stay, so a record still says where a release came from.
 */

/** What replaces a secret. */
export const REDACTED = '***';

/**
 * A URL with a scheme inside free text: up to whitespace, quotes, angle brackets or a backslash, so a
 * URL inside a JSON string or a quoted error message (`'https://...'`) ends where the string does.
 */
const URL_IN_TEXT = /[A-Za-z][A-Za-z0-9+.-]*:\/\/[^\s"'<>`\\]+/g;

/** Query parameter names that carry credentials: exact names, after lower-casing and `-` -> `_`. */
const SECRET_PARAMS: ReadonlySet<string> = new Set([
  'token',
  'access_token',
  'private_token',
  'refresh_token',
  'id_token',
  'auth',
  'auth_token',
  'authorization',
  'password',
  'passwd',
  'pass',
  'pwd',
  'secret',
  'client_secret',
  'key',
  'api_key',
  'apikey',
  'access_key',
  'secret_key',
  'sig',
  'signature',
  'credential',
  'credentials',
  'session',
  'code',
]);

/** Names that contain one of these parts are treated as secret too (`x_amz_signature`, `gitlab_token`). */
const SECRET_PART = /token|secret|passw|signature|credential|api_?key|access_?key|private_?key|session/;

/** Whether a query parameter name (raw, possibly percent-encoded) names a credential. */
export function isSecretParam(rawName: string): boolean {
  let name = rawName;
  try {
    name = decodeURIComponent(rawName.replace(/\+/g, ' '));
  } catch {
    // A malformed escape: judge the raw text.
  }
  const n = name.trim().toLowerCase().replace(/-/g, '_');
  return SECRET_PARAMS.has(n) || SECRET_PART.test(n);
}

/**
 * One URL with its userinfo replaced by `***` and the values of credential-like query parameters
 * replaced by `***`. Text that is not a `scheme://` URL is returned as it is (a local path, or the
 * scp-like `git@host:repo`, which cannot carry a password).
 */
export function redactUrl(url: string): string {
  const schemeEnd = url.indexOf('://');
  if (schemeEnd < 0 || !/^[A-Za-z][A-Za-z0-9+.-]*$/.test(url.slice(0, schemeEnd))) return url;
  const authStart = schemeEnd + 3;
  const at = userinfoEnd(url, authStart);
  const hostStart = at >= authStart ? at + 1 : authStart;
  let authEnd = hostStart;
  while (authEnd < url.length && !'/?#'.includes(url[authEnd])) authEnd++;
  const head = at >= authStart ? `${url.slice(0, authStart)}${REDACTED}@${url.slice(hostStart, authEnd)}` : url.slice(0, authEnd);
  const tail = url.slice(authEnd);
  const q = tail.indexOf('?');
  if (q < 0) return head + tail;
  const hash = tail.indexOf('#', q);
  const queryEnd = hash < 0 ? tail.length : hash;
  const query = tail
    .slice(q + 1, queryEnd)
    .split(/([&;])/)
    .map((part, i) => {
      if (i % 2 === 1) return part;
      const eq = part.indexOf('=');
      const name = eq < 0 ? part : part.slice(0, eq);
      return eq >= 0 && isSecretParam(name) ? `${name}=${REDACTED}` : part;
    })
    .join('');
  return head + tail.slice(0, q + 1) + query + tail.slice(queryEnd);
}

/**
 * The index of the "@" that ends a URL's userinfo, or -1. Git and WHATWG end the authority at the first
 * "/", "?" or "#". Here the userinfo runs to the last "@" before any "?" or "#", so a password with an
 * unescaped "/" or "@" is hidden too, or, when later, to the last "@" before the first "/", so one with an
 * unescaped "#" or "?" (`https://u:pa#ss@host/r.git`, which git itself would cut) is hidden as well. A
 * path or fragment holding an "@" may lose its host in the record, which is the safe way to be wrong.
 */
function userinfoEnd(url: string, authStart: number): number {
  let stop = url.length;
  for (let i = authStart; i < url.length; i++) {
    const c = url.charCodeAt(i);
    if (c === 0x3f /* ? */ || c === 0x23 /* # */) {
      stop = i;
      break;
    }
  }
  let at = url.lastIndexOf('@', stop - 1);
  const slash = url.indexOf('/', authStart);
  const late = url.lastIndexOf('@', (slash < 0 ? url.length : slash) - 1);
  if (late > at) at = late;
  return at >= authStart ? at : -1;
}

/** Secrets shorter than this are not searched for as bare text (a one-letter password would blank out prose). */
const MIN_BARE_SECRET = 4;

/** A `name=value` query parameter anywhere in text (git echoes a URL's path and query without its scheme). */
const PARAM_IN_TEXT = /([?&;])([A-Za-z0-9_.%+-]+)=([^\s&;#'"<>`\\]*)/g;

/**
 * The secret pieces of a URL as written: its userinfo (whole, and its password) and the
 * values of its credential-like query parameters, raw and percent-decoded. Used to scrub text that
 * quotes them in a form the URL patterns would not recognise.
 */
export function secretsOf(url: string): string[] {
  const out = new Set<string>();
  const add = (v: string) => {
    for (const form of [v, safeDecode(v)]) if (form.length >= MIN_BARE_SECRET) out.add(form);
  };
  const schemeEnd = url.indexOf('://');
  if (schemeEnd >= 0) {
    const authStart = schemeEnd + 3;
    const at = userinfoEnd(url, authStart);
    if (at >= authStart) {
      const userinfo = url.slice(authStart, at);
      add(userinfo);
      // With a colon the password is the secret (the user name alone is searched for only when it is
      // all there is, a token used as the user name).
      const colon = userinfo.indexOf(':');
      if (colon >= 0) add(userinfo.slice(colon + 1));
    }
  }
  for (const m of url.matchAll(PARAM_IN_TEXT)) if (isSecretParam(m[2]) && m[3] !== '') add(m[3]);
  return [...out].sort((a, b) => b.length - a.length);
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * Free text (a log message, an error from git, a JSON body) with every `scheme://` URL in it redacted,
 * every credential-like `?name=value` parameter blanked, and, for each of `sources` (a source as
 * typed), every quote of it or of its secret pieces replaced, since git may echo a URL without its
 * scheme or decoded. Returns the same string when there is nothing to hide, so callers may apply it to
 * everything they record.
 */
export function redactText(text: string, sources: readonly string[] = []): string {
  let out = text;
  for (const source of sources) {
    const safe = redactUrl(source);
    if (source !== '' && safe !== source) out = out.split(source).join(safe);
    for (const secret of secretsOf(source)) out = out.split(secret).join(REDACTED);
  }
  if (out.indexOf('://') >= 0) out = out.replace(URL_IN_TEXT, redactUrl);
  if (out.indexOf('=') >= 0) out = out.replace(PARAM_IN_TEXT, (all, sep: string, name: string) => (isSecretParam(name) ? `${sep}${name}=${REDACTED}` : all));
  return out;
}

/** `redactText` for a value that may be null. */
export function redactNullable(text: string | null): string | null {
  return text === null ? null : redactText(text);
}
