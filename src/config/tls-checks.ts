/**
 * The HTTPS keys: the top-level `tls` block, `apps.<app>.tls`, `https_redirect`, `hsts` and
 * `canonical_host`, and the checks that tie them to the listeners (a TLS listener needs certificates;
 * a redirect to https needs a TLS listener). Certificate files are only named here: the certificate
 * store (src/tls/) reads and checks them when the gateway starts or reloads, so `berth check` reports a
 * bad file the same way `start` does.
 */
import { resolve } from 'node:path';
import { Checker, Fields, isHttpUrl, isMapping, show, type KeyPath } from './checker.ts';
import {
  DEFAULT_ACME_DIRECTORY,
  DEFAULT_HSTS_MAX_AGE_S,
  DEFAULT_ON_DEMAND_IN_FLIGHT,
  DEFAULT_ON_DEMAND_PER_MINUTE,
  type AcmeConfig,
  type AppCertificate,
  type AppConfig,
  type CertificateFiles,
  type HstsConfig,
  type ListenAddress,
  type TlsConfig,
} from './schema.ts';

/** hstspreload.org's floor for `preload`: a max-age of at least one year. */
const PRELOAD_MIN_MAX_AGE_S = 31_536_000;
/** Longest max-age written in seconds that browsers and the header keep exact (about 68 years, 2^31 - 1). */
const MAX_HSTS_MAX_AGE_S = 2_147_483_647;

/** `certificate` and `key` of a mapping, as absolute paths (relative to the config file's directory). */
function checkFiles(c: Checker, f: Fields, dir: string): CertificateFiles | undefined {
  const certificate = f.string('certificate');
  const key = f.string('key');
  if (f.raw('certificate') === undefined) c.problem(f.path('certificate'), 'required: the PEM certificate file (the chain may follow the leaf)');
  if (f.raw('key') === undefined) c.problem(f.path('key'), 'required: the PEM private key file');
  if (certificate === undefined || key === undefined) return undefined;
  return { certificate: resolve(dir, certificate), key: resolve(dir, key) };
}

/** The top-level `tls` block. */
export function checkTls(c: Checker, f: Fields, dir: string): TlsConfig {
  const directory = f.string('directory');
  const defaultCertificate = f.raw('default_certificate') === undefined ? null : (checkFiles(c, f.fields('default_certificate'), dir) ?? null);
  f.take('default_certificate');
  f.done();
  return { directory: directory === undefined ? null : resolve(dir, directory), defaultCertificate };
}

/** The top-level `acme` block (every key optional: Let's Encrypt production, HTTP-01, no on-demand). */
export function checkAcme(c: Checker, f: Fields, dir: string): AcmeConfig {
  const directory = f.string('directory') ?? DEFAULT_ACME_DIRECTORY;
  if (!isHttpUrl(directory)) c.problem(f.path('directory'), `expected an https:// URL of an ACME directory, got ${show(directory)}`);
  const email = f.string('email') ?? null;
  if (email !== null && !/^[^\s@]+@[^\s@]+$/.test(email)) c.problem(f.path('email'), `expected an email address, got ${show(email)}`);
  const caRoot = f.string('ca_root');
  const challenge = f.choice('challenge', ['http-01', 'tls-alpn-01'] as const) ?? 'http-01';
  const ask = f.string('ask') ?? null;
  if (ask !== null && !isHttpUrl(ask)) c.problem(f.path('ask'), `expected an http:// or https:// URL, got ${show(ask)}`);
  const d = f.fields('on_demand');
  const onDemand = { perMinute: d.int('per_minute', 1) ?? DEFAULT_ON_DEMAND_PER_MINUTE, inFlight: d.int('in_flight', 1) ?? DEFAULT_ON_DEMAND_IN_FLIGHT };
  d.done();
  f.done();
  return { directory, email, caRoot: caRoot === undefined ? null : resolve(dir, caRoot), challenge, ask, onDemand };
}

/** `apps.<app>.tls`: one `{certificate, key}` for all the app's hosts, or a list of `{hosts, certificate, key}`. */
export function checkAppTls(c: Checker, f: Fields, dir: string, appHosts: string[]): { certificates: AppCertificate[]; acme: boolean } {
  const raw = f.take('tls');
  if (raw === undefined) return { certificates: [], acme: false };
  const at = f.path('tls');
  if (isMapping(raw) && raw.acme !== undefined && raw.acme !== null) {
    const e = c.fields(raw, at, f.setting('tls'));
    const acme = e.bool('acme') ?? false;
    if (acme && (e.raw('certificate') !== undefined || e.raw('key') !== undefined)) {
      c.problem([...at, 'acme'], 'give either acme: true or certificate and key files, not both');
    }
    e.take('certificate');
    e.take('key');
    e.done();
    return { certificates: [], acme };
  }
  const out: AppCertificate[] = [];
  const one = (value: unknown, where: KeyPath, listed: boolean) => {
    const e = c.fields(value, where, listed ? `${f.setting('tls')}[]` : f.setting('tls'));
    const hosts = listed ? checkCertificateHosts(c, e, appHosts) : [];
    const files = checkFiles(c, e, dir);
    e.done();
    if (files) out.push({ from: where.join('.'), hosts, files });
  };
  if (Array.isArray(raw)) {
    if (raw.length === 0) c.problem(at, 'expected at least one certificate, or leave tls out');
    raw.forEach((item, i) => one(item, [...at, i], true));
  } else {
    one(raw, at, false);
  }
  // The store serves a host from the first source that names it: per-host entries before whole-app ones.
  return { certificates: [...out.filter((x) => x.hosts.length > 0), ...out.filter((x) => x.hosts.length === 0)], acme: false };
}

/** `hosts` of one listed certificate: names the app serves (or, for a catch-all app, any name). */
function checkCertificateHosts(c: Checker, e: Fields, appHosts: string[]): string[] {
  const hosts = (e.strings('hosts') ?? []).map((h) => h.trim().toLowerCase());
  hosts.forEach((host, i) => {
    if (appHosts.length > 0 && !appHosts.some((pattern) => hostMatches(pattern, host))) {
      c.problem(e.listItemPath('hosts', i), `${show(host)} is not one of the app's hosts (${appHosts.join(', ')})`);
    }
  });
  return hosts;
}

/** Whether an app host pattern (`shop.test`, `*.shop.test`) covers `host` (a name or itself a pattern). */
function hostMatches(pattern: string, host: string): boolean {
  if (pattern === host) return true;
  if (!pattern.startsWith('*.')) return false;
  const suffix = pattern.slice(1);
  return host.endsWith(suffix) && host.length > suffix.length;
}

/** `apps.<app>.hsts`: `true` for the defaults, or `{max_age, include_subdomains, preload}`. */
export function checkHsts(c: Checker, f: Fields): HstsConfig | null {
  const raw = f.take('hsts');
  if (raw === undefined || raw === false) return null;
  const at = f.path('hsts');
  if (raw === true) return { maxAgeS: DEFAULT_HSTS_MAX_AGE_S, includeSubdomains: false, preload: false };
  const h = c.fields(raw, at, f.setting('hsts'));
  const maxAgeMs = h.duration('max_age', true, MAX_HSTS_MAX_AGE_S * 1000);
  const maxAgeS = maxAgeMs === undefined ? DEFAULT_HSTS_MAX_AGE_S : Math.floor(maxAgeMs / 1000);
  const includeSubdomains = h.bool('include_subdomains') ?? false;
  const preload = h.bool('preload') ?? false;
  h.done();
  if (preload && (!includeSubdomains || maxAgeS < PRELOAD_MIN_MAX_AGE_S)) {
    c.problem([...at, 'preload'], 'preload needs include_subdomains: true and a max_age of at least 365d (browsers refuse the preload list otherwise)');
  }
  return { maxAgeS, includeSubdomains, preload };
}

/** `apps.<app>.canonical_host`: one of the app's exact hosts (any name for a catch-all app). */
export function checkCanonicalHost(c: Checker, f: Fields, appHosts: string[]): string | null {
  const text = f.string('canonical_host');
  if (text === undefined) return null;
  const host = text.trim().toLowerCase();
  if (host.includes('*') || host.includes(':') || host.includes('/')) {
    c.problem(f.path('canonical_host'), `expected a host name without port or wildcard, got ${show(text)}`);
    return null;
  }
  if (appHosts.length > 0 && !appHosts.includes(host)) {
    c.problem(f.path('canonical_host'), `${show(host)} is not one of the app's hosts (${appHosts.join(', ')}): a redirect there would leave the app`);
  }
  return host;
}

/** What holds only across sections: TLS listeners need certificates, and https redirects need a TLS listener. */
export function checkTlsTogether(c: Checker, listen: ListenAddress[], tls: TlsConfig, acme: AcmeConfig, apps: Record<string, AppConfig>): void {
  const tlsAt = listen.findIndex((a) => a.tls);
  const anyCertificate = tls.directory !== null || tls.defaultCertificate !== null || Object.values(apps).some((a) => a.tls.length > 0 || a.acme);
  if (tlsAt >= 0 && !anyCertificate) {
    c.problem(['listen', tlsAt], 'a TLS listener needs certificates: set apps.<app>.tls (files or acme: true), tls.directory or tls.default_certificate');
  }
  for (const app of Object.values(apps)) {
    if (!app.acme) continue;
    const at = ['apps', app.name, 'tls', 'acme'];
    if (tlsAt < 0) c.problem(at, 'needs a TLS listener in listen, e.g. { address: "0.0.0.0:443", tls: true }');
    if (acme.challenge === 'http-01' && !listen.some((a) => !a.tls && a.kind === 'tcp')) {
      c.problem(at, 'the http-01 challenge needs a cleartext listener (port 80 for a public CA); or set acme.challenge: tls-alpn-01');
    }
    const wild = app.hosts.length === 0 || app.hosts.some((h) => h.startsWith('*.'));
    if (wild && acme.ask === null) {
      c.problem(at, `${app.hosts.length === 0 ? 'a catch-all app gets' : 'wildcard hosts get'} certificates on demand, which needs acme.ask (a URL that answers 200 for names you own)`);
    }
  }
  if (tlsAt >= 0) return;
  for (const app of Object.values(apps)) {
    if (app.httpsRedirect) c.problem(['apps', app.name, 'https_redirect'], 'needs a TLS listener in listen, e.g. { address: "0.0.0.0:443", tls: true }');
  }
}
