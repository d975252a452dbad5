import { EventEmitter } from 'node:events';
import { realpath } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { SecureContext, Server as TlsServer, TlsOptions } from 'node:tls';
import { ConfigError, errorMessage, type ConfigProblem } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import { Certificate, CertificateFileError } from './certificate.ts';
import { scanCertificateDirectory } from './certificate-directory.ts';
import { DirectoryWatcher } from './directory-watcher.ts';
import { tlsContextOptions, tlsServerOptions, type SniCallback } from './server-options.ts';
import { TicketKeys } from './ticket-keys.ts';
import type { CertificateFiles, CertificateInput, CertificateProblem, CertificateReload, CertificateRow, CertificateSource } from './types.ts';

/** The source name of certificates found in the certificate directory. */
export const DIRECTORY_SOURCE = 'tls.directory';
/** Quiet time after the last file event before the files are read again: an editor or certbot is done by then. */
export const CERTIFICATE_WATCH_DEBOUNCE_MS = 250;

export interface CertificateStoreOptions {
  logger: Logger;
  /** Re-read the files when they change on disk (default true). SIGHUP and config reload work either way. */
  watch?: boolean;
  debounceMs?: number;
  /** Shared with other processes on the same listeners; by default the store makes and rotates its own. */
  ticketKeys?: TicketKeys;
}

/** How a certificate berth obtains itself (ACME) shows in `berth certs`, beside the certificate. */
export interface ManagedCertificateInfo {
  /** `acme`, or `acme on-demand`. */
  source: string;
  /** ISO time of the next renewal attempt. */
  nextRenewal: string | null;
  /** The last renewal failed (the certificate shown is the previous one); else null. */
  error: string | null;
}

/** One configured pair (or directory pair, or managed certificate) and the certificate it serves now. */
interface Slot {
  source: string;
  /** Configured names; empty: the certificate's own names. */
  hosts: string[];
  files: CertificateFiles;
  /** The last good certificate; null if it never loaded. */
  certificate: Certificate | null;
  problem: Problem | null;
  /** Set for a managed (ACME) certificate only. */
  managed?: ManagedCertificateInfo;
}

/** A problem and, for a configured pair, which of its two keys it is about (`apps.shop.tls.key`). */
interface Problem extends CertificateProblem {
  field: 'certificate' | 'key' | null;
}

/** What SNI looks up per handshake: built on every change, never per handshake. */
interface Table {
  exact: Map<string, Slot>;
  /** Keyed by the suffix after `*.`: `shop.test` for `*.shop.test`. */
  wildcards: Map<string, Slot>;
  fallback: Slot | null;
}

interface State {
  sources: Slot[];
  /** Keyed by certificate path. */
  directory: Map<string, Slot>;
  /** A problem with the directory itself (unreadable), apart from its files. */
  directoryProblem: Problem | null;
  fallback: Slot | null;
  watchDirs: string[];
}

const EMPTY_TABLE: Table = { exact: new Map(), wildcards: new Map(), fallback: null };

/**
 * Every certificate berth serves, from files or obtained by ACME (`setManaged`), chosen per handshake by
 * SNI: an exact name, then the one-label wildcard covering it (`*.shop.test` covers `a.shop.test`, not
 * `a.b.shop.test`, as clients check), configured sources before ACME certificates before the
 * certificate directory at each step, then the default certificate; with none, null (the handshake is
 * refused with an alert).
 *
 * Loading is strict (`start`, `configure`: a bad file is a ConfigError naming the key and the file, and
 * nothing changes). Re-reading is forgiving (`reload`, file changes on disk): a source whose new files
 * are bad keeps serving its previous certificate, and the problem is logged, kept in `errors()` and
 * sent with the `reload` event. Contexts are immutable, so open connections keep the certificate they
 * were handed and new handshakes get the new one; no listener is touched except through `attach`.
 */
export class CertificateStore extends EventEmitter<{ reload: [CertificateReload] }> {
  /** For a listener's `SNICallback` option; made once, not per handshake. */
  readonly SNICallback: SniCallback = (servername, cb) => cb(null, this.select(servername) ?? undefined);

  #input: CertificateInput;
  #log: Logger;
  #state: State = { sources: [], directory: new Map(), directoryProblem: null, fallback: null, watchDirs: [] };
  #table: Table = EMPTY_TABLE;
  /** Certificates berth obtained itself (ACME), by host; kept apart from the files, which reloads re-read. */
  #managed = new Map<string, Slot>();
  /** The default certificate's PEM, for listeners' own contexts (clients without SNI); see `attach`. */
  #fallbackPem: { cert: Buffer; key: Buffer } | null = null;
  #servers = new Set<TlsServer>();
  #ticketKeys: TicketKeys;
  #ownsTicketKeys: boolean;
  #stopRotation: (() => void) | null = null;
  #watcher: DirectoryWatcher | null;
  #queue: Promise<unknown> = Promise.resolve();
  /** Unpaired files in the directory already warned about, so a watch event does not repeat the warning. */
  #unpairedSeen = new Set<string>();
  #stopped = false;
  #debounceMs: number;

  constructor(input: CertificateInput, options: CertificateStoreOptions) {
    super();
    this.#input = input;
    this.#log = options.logger;
    this.#ownsTicketKeys = options.ticketKeys === undefined;
    this.#ticketKeys = options.ticketKeys ?? new TicketKeys();
    this.#debounceMs = options.debounceMs ?? CERTIFICATE_WATCH_DEBOUNCE_MS;
    this.#watcher = options.watch === false ? null : new DirectoryWatcher(() => this.#reloadFromDisk(), { debounceMs: this.#debounceMs, logger: this.#log });
  }

  /** Loads every certificate (throws ConfigError listing every bad file), then watches the files and rotates ticket keys. */
  async start(): Promise<void> {
    await this.configure(this.#input);
    this.#stopRotation = this.#ticketKeys.onRotate((key) => {
      for (const server of this.#servers) server.setTicketKeys(key);
    });
    if (this.#ownsTicketKeys) this.#ticketKeys.start();
  }

  /**
   * Serves a new set of sources (config reload). All or nothing: any bad file throws ConfigError and the
   * current certificates stay. Unchanged files are not loaded again.
   */
  configure(input: CertificateInput): Promise<void> {
    return this.#serialise(async () => {
      const { state, problems, pem } = await this.#read(input, this.#state);
      if (problems.length > 0) {
        wipe(pem);
        throw new ConfigError(problems.map(toConfigProblem));
      }
      this.#input = input;
      this.#announce(this.#state, state);
      this.#commit(state, pem);
    });
  }

  /**
   * Reads every file again (SIGHUP, a change on disk). A source whose files are now bad keeps its previous
   * certificate; what failed is in the answer, in `errors()` and in the log.
   */
  reload(): Promise<CertificateReload> {
    return this.#reload(false);
  }

  #reload(settle: boolean): Promise<CertificateReload> {
    return this.#serialise(async () => {
      let read = await this.#read(this.#input, this.#state);
      if (settle && read.problems.length > 0) {
        // A pair is often replaced as two renames, and a read between them sees a key that does not
        // match: look once more after a quiet spell before calling it broken.
        await new Promise((resolve) => setTimeout(resolve, this.#debounceMs));
        wipe(read.pem);
        read = await this.#read(this.#input, this.#state);
      }
      const { state, problems, pem } = read;
      const changed = this.#announce(this.#state, state);
      for (const p of problems) this.#log.error({ source: p.source, path: p.path, err: p.message }, 'certificate not reloaded, serving the previous one');
      this.#commit(state, pem);
      const result: CertificateReload = { changed, problems: problems.map(publicProblem) };
      this.emit('reload', result);
      return result;
    });
  }

  /** The context for a handshake naming `servername` (null or '' when the client sent none); null: refuse. */
  select(servername: string | null | undefined): SecureContext | null {
    const t = this.#table;
    if (servername) {
      let name = servername.toLowerCase();
      if (name.endsWith('.')) name = name.slice(0, -1);
      const exact = t.exact.get(name);
      if (exact !== undefined) return exact.certificate!.context;
      const dot = name.indexOf('.');
      if (dot > 0) {
        const wild = t.wildcards.get(name.slice(dot + 1));
        if (wild !== undefined) return wild.certificate!.context;
      }
    }
    return t.fallback === null ? null : t.fallback.certificate!.context;
  }

  /**
   * Serves a certificate berth obtained itself (ACME) for one host name, or stops serving it (null).
   * Configured files for the same name win over it; it wins over the certificate directory and the
   * default. Takes effect for the next handshake; open connections keep theirs.
   */
  setManaged(host: string, certificate: Certificate | null, info: ManagedCertificateInfo = { source: 'acme', nextRenewal: null, error: null }): void {
    const name = host.toLowerCase().replace(/\.$/, '');
    const held = this.#managed.get(name);
    if (certificate === null) {
      if (!held) return;
      this.#managed.delete(name);
    } else {
      if (held && held.certificate === certificate) {
        held.managed = { ...info };
        return; // same certificate: only what `berth certs` shows changed
      }
      this.#managed.set(name, { source: info.source, hosts: [name], files: certificate.files, certificate, problem: null, managed: { ...info } });
    }
    this.#table = buildTable(this.#state, this.#managed);
  }

  /** Whether a handshake for `servername` gets a certificate naming it (exact or wildcard), not the default. */
  serves(servername: string): boolean {
    const t = this.#table;
    let name = servername.toLowerCase();
    if (name.endsWith('.')) name = name.slice(0, -1);
    if (t.exact.has(name)) return true;
    const dot = name.indexOf('.');
    return dot > 0 && t.wildcards.has(name.slice(dot + 1));
  }

  /** The session ticket keys its listeners use (proxy worker threads are given the same ones). */
  get ticketKeys(): TicketKeys {
    return this.#ticketKeys;
  }

  /** Options for `tls.createServer` / `https.createServer` / `http2.createSecureServer`; the caller adds ALPN. */
  serverOptions(): TlsOptions {
    return tlsServerOptions(this.SNICallback, this.#ticketKeys.current);
  }

  /**
   * Keeps a listener's own context current: it carries the default certificate (the one a client without
   * SNI gets, which Node never asks SNICallback about) and the shared ticket key. Call once per listener,
   * after creating it with `serverOptions()`. Returns the function that lets it go.
   */
  attach(server: TlsServer): () => void {
    this.#servers.add(server);
    this.#applyServerContext(server);
    return () => this.#servers.delete(server);
  }

  /** `berth certs` / `GET /v1/certificates`: each name served, in lookup order, then the default as `*`. */
  describe(): CertificateRow[] {
    const rows: CertificateRow[] = [];
    const t = this.#table;
    for (const [host, slot] of [...t.exact].sort(byKey)) rows.push(row(host, slot));
    for (const [suffix, slot] of [...t.wildcards].sort(byKey)) rows.push(row(`*.${suffix}`, slot));
    if (t.fallback) rows.push(row('*', t.fallback));
    return rows;
  }

  /** Sources whose last (re)load failed; each still serves its previous good certificate, if it ever had one. */
  errors(): CertificateProblem[] {
    const out: CertificateProblem[] = [];
    if (this.#state.directoryProblem) out.push(publicProblem(this.#state.directoryProblem));
    for (const slot of allSlots(this.#state)) if (slot.problem) out.push(publicProblem(slot.problem));
    return out;
  }

  /** The directories watched for changes (for status and tests). */
  get watchedDirectories(): string[] {
    return this.#watcher?.directories ?? [];
  }

  /** Stops watching and rotating. Contexts already handed to connections stay valid. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#watcher?.close();
    this.#stopRotation?.();
    this.#stopRotation = null;
    if (this.#ownsTicketKeys) this.#ticketKeys.stop();
    this.#servers.clear();
    await this.#queue.catch(() => {});
  }

  /** Reads the input against `before`: what would be served, and what failed (with its previous certificate kept). */
  async #read(input: CertificateInput, before: State): Promise<{ state: State; problems: Problem[]; pem: { cert: Buffer; key: Buffer } | null }> {
    const problems: Problem[] = [];
    const bySource = new Map<string, Slot>();
    for (const slot of before.sources) bySource.set(slot.source, slot);
    const sources: Slot[] = [];
    for (const source of input.sources) sources.push(await this.#loadSlot(source.from, normaliseHosts(source), source.files, bySource.get(source.from), problems));

    let pem: { cert: Buffer; key: Buffer } | null = null;
    let fallback: Slot | null = null;
    const d = input.defaultCertificate;
    if (d) {
      const capture = (cert: Buffer, key: Buffer) => {
        pem = { cert: Buffer.from(cert), key: Buffer.from(key) };
      };
      fallback = await this.#loadSlot(d.from, [], d.files, before.fallback ?? undefined, problems, capture);
    }

    const directory = new Map<string, Slot>();
    let directoryProblem: Problem | null = null;
    const watchDirs = new Set<string>();
    if (input.directory) {
      try {
        const scan = await scanCertificateDirectory(input.directory);
        for (const dir of scan.directories) watchDirs.add(dir);
        for (const path of scan.unpaired) {
          if (this.#unpairedSeen.has(path)) continue;
          this.#unpairedSeen.add(path);
          this.#log.warn({ source: DIRECTORY_SOURCE, path }, 'certificate without a key beside it, skipped');
        }
        for (const entry of scan.entries) {
          const slot = await this.#loadSlot(DIRECTORY_SOURCE, [], entry.files, before.directory.get(entry.files.certificate), problems);
          directory.set(entry.files.certificate, slot);
        }
      } catch (err) {
        directoryProblem = problem(DIRECTORY_SOURCE, input.directory, `cannot be read (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})`);
        problems.push(directoryProblem);
        // Keep serving what the directory held; it may be back (a remount) at the next reload.
        if (input.directory === this.#input.directory) for (const [key, slot] of before.directory) directory.set(key, slot);
        watchDirs.add(dirname(input.directory));
      }
    }
    const state: State = { sources, directory, directoryProblem, fallback, watchDirs: [] };
    for (const slot of allSlots(state)) for (const dir of await directoriesOf(slot.files)) watchDirs.add(dir);
    state.watchDirs = [...watchDirs];
    return { state, problems, pem };
  }

  async #loadSlot(
    source: string,
    hosts: string[],
    files: CertificateFiles,
    before: Slot | undefined,
    problems: Problem[],
    withServerPem?: (cert: Buffer, key: Buffer) => void,
  ): Promise<Slot> {
    // A previous certificate stands in only for the same files: a config that names other files starts afresh.
    const previous = before && before.files.certificate === files.certificate && before.files.key === files.key ? before.certificate : null;
    try {
      const certificate = await Certificate.load(files, { previous, withServerPem });
      return { source, hosts, files, certificate, problem: null };
    } catch (err) {
      const p =
        err instanceof CertificateFileError
          ? problem(source, err.path, err.reason, err.field)
          : problem(source, files.certificate, errorMessage(err), 'certificate');
      // A problem that persists keeps the time it began.
      if (before?.problem && before.problem.message === p.message && before.problem.path === p.path) p.since = before.problem.since;
      problems.push(p);
      return { source, hosts, files, certificate: previous, problem: p };
    }
  }

  #commit(state: State, pem: { cert: Buffer; key: Buffer } | null): void {
    const fallbackChanged = (state.fallback?.certificate ?? null) !== (this.#state.fallback?.certificate ?? null);
    this.#state = state;
    if (state.fallback?.certificate == null) this.#fallbackPem = null;
    else if (pem !== null) this.#fallbackPem = pem;
    this.#table = buildTable(state, this.#managed);
    if (fallbackChanged) for (const server of this.#servers) this.#applyServerContext(server);
    if (!this.#stopped) this.#watcher?.watch(state.watchDirs);
  }

  #applyServerContext(server: TlsServer): void {
    const pem = this.#fallbackPem;
    server.setSecureContext({ ...tlsContextOptions(this.#ticketKeys.current), ...(pem ? { cert: pem.cert, key: pem.key } : {}) });
  }

  /** Logs each certificate that is new in `after` (with what is odd about it); returns their sources. */
  #announce(before: State, after: State): string[] {
    const previous = new Map<string, Certificate | null>();
    for (const slot of allSlots(before)) previous.set(slotKey(slot), slot.certificate);
    const changed = new Set<string>();
    for (const slot of allSlots(after)) {
      const c = slot.certificate;
      if (c === null || slot.problem !== null || previous.get(slotKey(slot)) === c) continue;
      changed.add(slot.source);
      this.#log.info({ source: slot.source, path: c.files.certificate, names: c.names, notAfter: c.notAfter.toISOString(), fingerprint: c.fingerprint256 }, 'certificate loaded');
      this.#warn(slot, c);
    }
    return [...changed];
  }

  #warn(slot: Slot, c: Certificate): void {
    const at = { source: slot.source, path: c.files.certificate };
    if (c.warnings.mustStaple) this.#log.warn(at, 'certificate demands OCSP stapling (Must-Staple), which berth does not do: clients may refuse it');
    if (c.warnings.keyReadableByOthers) this.#log.warn({ source: slot.source, path: c.files.key }, 'private key file is readable by every user');
    if (c.warnings.notYetValid) this.#log.warn({ ...at, notBefore: c.notBefore.toISOString() }, 'certificate is not valid yet');
    for (const host of slot.hosts) if (!c.covers(host)) this.#log.warn({ ...at, host, names: c.names }, 'certificate does not cover a host it serves');
  }

  #reloadFromDisk(): void {
    if (this.#stopped) return;
    this.#reload(true).catch((err: unknown) => this.#log.error({ err: errorMessage(err) }, 'certificate reload failed'));
  }

  /** One read at a time: a file event during a reload waits for it, then reads again. */
  #serialise<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(work);
    this.#queue = run.catch(() => {});
    return run;
  }
}

function buildTable(state: State, managed: ReadonlyMap<string, Slot>): Table {
  const table: Table = { exact: new Map(), wildcards: new Map(), fallback: state.fallback?.certificate ? state.fallback : null };
  // Configured sources first, in config order: the first to name a host serves it.
  for (const slot of state.sources) {
    if (!slot.certificate) continue;
    for (const host of slot.hosts.length > 0 ? slot.hosts : slot.certificate.names) add(table, host, slot, false);
  }
  for (const [host, slot] of managed) add(table, host, slot, false);
  for (const slot of state.directory.values()) {
    if (!slot.certificate) continue;
    for (const host of slot.certificate.names) add(table, host, slot, true);
  }
  return table;
}

/** Adds a name unless a configured source has it; between directory certificates the one valid longest wins (a renewal beside the old file). */
function add(table: Table, host: string, slot: Slot, fromDirectory: boolean): void {
  const map = host.startsWith('*.') ? table.wildcards : table.exact;
  const key = host.startsWith('*.') ? host.slice(2) : host;
  const held = map.get(key);
  if (held === undefined) map.set(key, slot);
  else if (fromDirectory && held.source === DIRECTORY_SOURCE && held.certificate!.notAfter < slot.certificate!.notAfter) map.set(key, slot);
}

function row(host: string, slot: Slot): CertificateRow {
  const c = slot.certificate!;
  return {
    host,
    source: slot.source,
    path: c.files.certificate,
    issuer: c.issuer,
    notBefore: c.notBefore.toISOString(),
    notAfter: c.notAfter.toISOString(),
    fingerprint: c.fingerprint256,
    nextRenewal: slot.managed?.nextRenewal ?? null,
    covered: host === '*' || c.covers(host),
    error: slot.problem?.message ?? slot.managed?.error ?? null,
  };
}

/** Zeroes a copy of the default key that will not be used, rather than leave it to the collector. */
function wipe(pem: { key: Buffer } | null): void {
  pem?.key.fill(0);
}

function normaliseHosts(source: CertificateSource): string[] {
  return source.hosts.map((h) => h.trim().toLowerCase().replace(/\.$/, '')).filter((h) => h !== '');
}

function allSlots(state: State): Slot[] {
  const slots = [...state.sources, ...state.directory.values()];
  if (state.fallback) slots.push(state.fallback);
  return slots;
}

function slotKey(slot: Slot): string {
  return `${slot.source}\0${slot.files.certificate}`;
}

function problem(source: string, path: string, message: string, field: Problem['field'] = null): Problem {
  return { source, path, message, since: new Date().toISOString(), field };
}

function publicProblem(p: Problem): CertificateProblem {
  return { source: p.source, path: p.path, message: p.message, since: p.since };
}

function toConfigProblem(p: Problem): ConfigProblem {
  // `apps.shop.tls.key: /etc/ssl/shop.key: the key does not match ...`; the directory names the file in the message.
  if (p.source === DIRECTORY_SOURCE) return { path: DIRECTORY_SOURCE, message: `${p.path}: ${p.message}` };
  return { path: p.field ? `${p.source}.${p.field}` : p.source, message: `${p.path}: ${p.message}` };
}

/** Where a change to this pair shows up: the files' directories, and their targets' when they are links. */
async function directoriesOf(files: CertificateFiles): Promise<string[]> {
  const dirs = new Set<string>();
  for (const path of [files.certificate, files.key]) {
    dirs.add(dirname(path));
    try {
      dirs.add(dirname(await realpath(path)));
    } catch {
      // Missing now; the directory watch sees it arrive.
    }
  }
  return [...dirs];
}

function byKey(a: [string, Slot], b: [string, Slot]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}
