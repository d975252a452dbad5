/**
 * Certificates berth obtains itself (ACME, RFC 8555): for the hosts of apps with `tls: { acme: true }`
 * when they first appear, and for names a wildcard or catch-all app serves at their first handshake
 * (on-demand). They are kept in the state store (a fleet shares them later) and served through the
 * CertificateStore. Each is renewed at two thirds of its lifetime; a failure is retried with jittered
 * exponential backoff while the previous certificate goes on being served, logged, and shown in
 * `status()` and `berth certs`.
 *
 * What the proxy calls: `httpChallenge(token)` on cleartext listeners for `/.well-known/acme-challenge/`,
 * and the HandshakeRouter (../handshake-router.ts) on TLS listeners, which asks `alpnChallengeContext`
 * and `onDemand`. What the gateway calls: `start`, `ensure(hosts)` at start, config reload and deploy
 * (without awaiting it: HTTP-01 needs the listeners up), `status`/`expirySeconds` for status and
 * metrics, and `stop`.
 */
import type { PemPair } from '../types.ts';
import { challengeToken } from './challenge-path.ts';
import type { SecureContext } from 'node:tls';
import { errorMessage } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import type { AcmeCertificateRecord, AcmeStore } from '../../store/store.ts';
import { Certificate } from '../certificate.ts';
import type { CertificateStore } from '../certificate-store.ts';
import { AcmeIssuer, type AcmeChallenge } from './acme-issuer.ts';
import { ORDER_ELSEWHERE_RECHECK_MS, type AcmeFleet } from './fleet-share.ts';
import { OnDemandGate, type OnDemandLimits } from './on-demand-gate.ts';
import { isDnsName } from './dns-name.ts';
import { nextRenewal, retryDelay, type RetryPolicy } from './renewal.ts';

export const LETS_ENCRYPT_DIRECTORY = 'https://acme-v02.api.letsencrypt.org/directory';
export const LETS_ENCRYPT_STAGING_DIRECTORY = 'https://acme-staging-v02.api.letsencrypt.org/directory';
/** Orders running at once, configured and on-demand together. */
export const ACME_CONCURRENT_ORDERS = 2;
/** Timers longer than this overflow node's 32-bit delay: a far renewal is re-armed in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const SOURCE = 'acme';
const SOURCE_ON_DEMAND = 'acme on-demand';

/** Time as the manager sees it; tests drive renewals through it. */
export interface AcmeClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const SYSTEM_CLOCK: AcmeClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface AcmeManagerOptions {
  /** Default: Let's Encrypt production. */
  directoryUrl?: string;
  email: string | null;
  /** PEM of the CA behind the directory's HTTPS (a private CA, pebble); null: the system's roots. */
  caRoot?: string | null;
  /** Default http-01. */
  challenge?: AcmeChallenge;
  /** The on-demand `ask` URL; null: on-demand refuses every name. */
  ask?: string | null;
  onDemand?: Partial<OnDemandLimits>;
  retry?: Partial<RetryPolicy>;
  /** Told whenever the pending HTTP-01 answers change (proxy worker threads answer them too). */
  onHttpTokens?: (tokens: [string, string][]) => void;
  /**
   * Told whenever the certificate served for a host changes (null: no longer served), with its PEM, so
   * proxy worker threads serve it too. The PEM is the store's record or the CA's answer, as loaded.
   */
  onManaged?: (host: string, pem: PemPair | null) => void;
  /** Told when a TLS-ALPN-01 challenge certificate is made for a host (null: its challenge is over). */
  onAlpnChallenge?: (host: string, pem: PemPair | null) => void;
  store: AcmeStore;
  certificates: CertificateStore;
  logger: Logger;
  clock?: AcmeClock;
  /** In [0, 1): the jitter of retries. */
  random?: () => number;
  /** acme-client's first poll delay (tests shorten it). */
  pollMinMs?: number;
  /** A fleet (fleet-share.ts): one node orders each host, every node serves it and answers its challenges. */
  fleet?: AcmeFleet | null;
}

/** One row of `status()`: a host berth holds (or is trying to hold) a certificate for. */
export interface AcmeHostStatus {
  host: string;
  /** `acme`, or `acme on-demand`. */
  source: string;
  /** valid: a certificate is served. pending: none yet, an order is running or due. */
  state: 'valid' | 'pending';
  notBefore: string | null;
  notAfter: string | null;
  /** When the next order (renewal or retry) starts. */
  nextRenewal: string | null;
  /** The last order's failure, until an order succeeds. */
  lastError: string | null;
  lastErrorAt: string | null;
  /** Orders failed in a row. */
  failures: number;
}

interface HostState {
  host: string;
  onDemand: boolean;
  certificate: Certificate | null;
  notBefore: number;
  notAfter: number;
  nextAt: number | null;
  timer: unknown;
  running: Promise<void> | null;
  failures: number;
  lastError: string | null;
  lastErrorAt: number | null;
}

export class AcmeManager {
  readonly directoryUrl: string;
  #onManaged: ((host: string, pem: PemPair | null) => void) | null;
  #issuer: AcmeIssuer;
  #gate: OnDemandGate;
  #store: AcmeStore;
  #certificates: CertificateStore;
  #log: Logger;
  #clock: AcmeClock;
  #random: () => number;
  #retry: Partial<RetryPolicy>;
  #hosts = new Map<string, HostState>();
  /** On-demand orders under way, so concurrent handshakes for one name share one order. */
  #pendingOnDemand = new Map<string, Promise<boolean>>();
  #slots = ACME_CONCURRENT_ORDERS;
  #waiting: (() => void)[] = [];
  #stopped = false;
  #fleet: AcmeFleet | null;

  constructor(opts: AcmeManagerOptions) {
    this.#fleet = opts.fleet ?? null;
    this.directoryUrl = opts.directoryUrl ?? LETS_ENCRYPT_DIRECTORY;
    this.#clock = opts.clock ?? SYSTEM_CLOCK;
    this.#log = opts.logger;
    this.#store = opts.store;
    this.#certificates = opts.certificates;
    this.#random = opts.random ?? Math.random;
    this.#retry = opts.retry ?? {};
    const now = () => this.#clock.now();
    this.#issuer = new AcmeIssuer({
      directoryUrl: this.directoryUrl,
      email: opts.email,
      caRoot: opts.caRoot ?? null,
      challenge: opts.challenge ?? 'http-01',
      store: opts.store,
      logger: opts.logger,
      now,
      pollMinMs: opts.pollMinMs,
      onHttpTokens: opts.onHttpTokens,
      onAlpnChallenge: opts.onAlpnChallenge,
      fleet: opts.fleet,
    });
    this.#onManaged = opts.onManaged ?? null;
    this.#gate = new OnDemandGate(opts.ask ?? null, opts.onDemand ?? {}, now);
  }

  /** Serves the on-demand certificates kept in the store and schedules their renewals. Configured hosts come with `ensure`. */
  async start(): Promise<void> {
    this.#issuer.start();
    for (const record of await this.#store.listCertificates()) {
      if (!record.onDemand || record.directory !== this.directoryUrl || this.#hosts.has(record.host)) continue;
      const state = this.#newState(record.host, true);
      if (!this.#adopt(state, record)) this.#hosts.delete(record.host);
    }
  }

  /**
   * Holds certificates for exactly these configured hosts (start, config reload, deploy): a new host is
   * served from the store when it holds a usable certificate, else ordered now; a host no longer listed
   * stops being served (its certificate stays in the store for when it comes back). Resolves when every
   * new host's first attempt has finished, successful or not; failures are in `status()`, not thrown.
   */
  async ensure(hosts: readonly string[], stillOnDemand: ((name: string) => boolean) | null = null): Promise<void> {
    this.#issuer.start();
    const wanted = new Set<string>();
    for (const host of hosts.map(normalise)) {
      // HTTP-01 and TLS-ALPN-01 prove one name at a time: a wildcard is served on demand, and an IP literal not at all.
      if (isDnsName(host)) wanted.add(host);
      else this.#log.error({ host }, 'ACME cannot obtain a certificate for this name, skipped');
    }
    for (const state of [...this.#hosts.values()]) {
      if (wanted.has(state.host)) continue;
      if (state.onDemand) {
        // An on-demand name stays while some ACME app would still order it; else it is dropped, renewals too.
        if (stillOnDemand === null || stillOnDemand(state.host)) continue;
        this.#forget(state);
        await this.#store.deleteCertificate(state.host).catch((err: unknown) => this.#log.error({ host: state.host, err: errorMessage(err) }, 'ACME certificate not deleted from the store'));
        this.#log.info({ host: state.host }, 'ACME on-demand name no longer routed to an ACME app: its certificate is no longer served or renewed');
        continue;
      }
      this.#forget(state);
      this.#log.info({ host: state.host }, 'ACME host removed, its certificate is no longer served');
    }
    const attempts: Promise<void>[] = [];
    for (const host of wanted) {
      const held = this.#hosts.get(host);
      if (held) {
        held.onDemand = false; // configured now: it stays when on-demand names are dropped
        continue;
      }
      const state = this.#newState(host, false);
      attempts.push(this.#first(state));
    }
    await Promise.all(attempts);
  }

  /** The key authorization for `GET /.well-known/acme-challenge/<token>` (200, text/plain), or null. */
  httpChallenge(token: string): string | null {
    return this.#issuer.httpChallenge(token);
  }

  /**
   * What a cleartext listener answers, before routing, modes and redirects, for a request to `path`
   * (query ignored): the key authorization (200, text/plain) when it is a pending HTTP-01 challenge's
   * URL, else null, and the request is routed as usual (an app may run its own ACME client).
   */
  answerHttp(path: string): string | null {
    const token = challengeToken(path);
    return token === null ? null : this.#issuer.httpChallenge(token);
  }

  /** Every pending HTTP-01 answer (token, key authorization): what proxy worker threads answer with. */
  httpTokens(): [string, string][] {
    return this.#issuer.httpTokens();
  }

  /** The TLS-ALPN-01 challenge certificate for a handshake offering `acme-tls/1` for `servername`, or null. */
  alpnChallengeContext(servername: string): SecureContext | null {
    return this.#issuer.alpnChallengeContext(servername);
  }

  /**
   * For a handshake naming `servername` that no certificate serves, under a wildcard or catch-all app:
   * obtains one if the `ask` URL allows the name and the limits have room. True when a certificate for it
   * is served now. Concurrent handshakes for one name wait on one order.
   */
  onDemand(servername: string): Promise<boolean> {
    const name = normalise(servername);
    if (this.#stopped) return Promise.resolve(false);
    if (this.#hosts.get(name)?.certificate) return Promise.resolve(true);
    let pending = this.#pendingOnDemand.get(name);
    if (!pending) {
      pending = this.#onDemand(name).finally(() => this.#pendingOnDemand.delete(name));
      this.#pendingOnDemand.set(name, pending);
    }
    return pending;
  }

  /**
   * Another node of the fleet saved a certificate for `host` (the store said so): served here when it is
   * one this node holds and newer than what it serves. Never throws.
   */
  async certificateChanged(host: string): Promise<void> {
    const state = this.#hosts.get(normalise(host));
    if (!state || this.#stopped) return;
    const record = await this.#store.getCertificate(state.host).catch(() => null);
    if (!record || record.directory !== this.directoryUrl || Date.parse(record.notAfter) <= state.notAfter) return;
    if (this.#hosts.get(state.host) === state && this.#adopt(state, record)) {
      state.failures = 0;
      state.lastError = null;
      state.lastErrorAt = null;
      this.#publish(state);
    }
  }

  /** Another node shared (or withdrew) a challenge answer: this node answers it too. Never throws. */
  async challengeChanged(key: string): Promise<void> {
    if (!this.#fleet || this.#stopped) return;
    const value = await this.#fleet.read(key).catch((err: unknown) => {
      this.#log.warn({ key, err: errorMessage(err) }, 'shared ACME answer not read');
      return undefined;
    });
    if (value !== undefined) this.#issuer.answerShared(key, value);
  }

  /**
   * Answers every challenge the fleet's nodes have shared: at start, and when the store's announcements
   * were out of reach a while (some may have been missed). Never throws.
   */
  async loadShared(): Promise<void> {
    if (!this.#fleet || this.#stopped) return;
    try {
      for (const [key, value] of await this.#fleet.readAll()) this.#issuer.answerShared(key, value);
    } catch (err) {
      this.#log.warn({ err: errorMessage(err) }, 'shared ACME answers not read');
    }
  }

  /** Every host held, by name. */
  status(): AcmeHostStatus[] {
    return [...this.#hosts.values()].sort((a, b) => (a.host < b.host ? -1 : 1)).map((s) => ({
      host: s.host,
      source: s.onDemand ? SOURCE_ON_DEMAND : SOURCE,
      state: s.certificate ? 'valid' : 'pending',
      notBefore: s.certificate ? iso(s.notBefore) : null,
      notAfter: s.certificate ? iso(s.notAfter) : null,
      nextRenewal: s.nextAt === null ? null : iso(s.nextAt),
      lastError: s.lastError,
      lastErrorAt: s.lastErrorAt === null ? null : iso(s.lastErrorAt),
      failures: s.failures,
    }));
  }

  /** For a `berth_certificate_expiry_timestamp_seconds{host}` gauge: each served certificate's notAfter, in Unix seconds. */
  expirySeconds(): { host: string; seconds: number }[] {
    const out: { host: string; seconds: number }[] = [];
    for (const s of this.#hosts.values()) if (s.certificate) out.push({ host: s.host, seconds: Math.floor(s.notAfter / 1000) });
    return out.sort((a, b) => (a.host < b.host ? -1 : 1));
  }

  /**
   * Stops renewing. Orders under way get `deadlineMs` to finish (and are stored if they do); after that
   * they are left to fail on their own. Certificates already served stay served.
   */
  async stop(deadlineMs = 5_000): Promise<void> {
    this.#stopped = true;
    const running: Promise<void>[] = [];
    for (const s of this.#hosts.values()) {
      if (s.timer !== null) this.#clock.clearTimeout(s.timer);
      s.timer = null;
      if (s.running) running.push(s.running);
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled(running), new Promise((r) => (timer = setTimeout(r, deadlineMs)))]);
    clearTimeout(timer);
    this.#issuer.stop();
  }

  /** Forced stop: nothing is waited for. */
  destroy(): void {
    void this.stop(0);
  }

  #newState(host: string, onDemand: boolean): HostState {
    const state: HostState = { host, onDemand, certificate: null, notBefore: 0, notAfter: 0, nextAt: null, timer: null, running: null, failures: 0, lastError: null, lastErrorAt: null };
    this.#hosts.set(host, state);
    return state;
  }

  /** A new host: the store's certificate if usable (renewed now if due), else an order now. */
  async #first(state: HostState): Promise<void> {
    let record: AcmeCertificateRecord | null = null;
    try {
      record = await this.#store.getCertificate(state.host);
    } catch (err) {
      this.#log.error({ host: state.host, err: errorMessage(err) }, 'ACME certificate not read from the store');
    }
    if (record && record.directory === this.directoryUrl && this.#adopt(state, record)) return;
    await this.#order(state);
  }

  /** Serves a stored certificate and schedules its renewal; false when it is not usable (expired, broken). */
  #adopt(state: HostState, record: AcmeCertificateRecord): boolean {
    let certificate: Certificate;
    try {
      certificate = Certificate.fromPem(`acme:${state.host}`, Buffer.from(record.certificatePem), Buffer.from(record.keyPem), { now: this.#clock.now() });
    } catch (err) {
      this.#log.warn({ host: state.host, err: errorMessage(err) }, 'stored ACME certificate not usable, ordering a new one');
      return false;
    }
    this.#serve(state, certificate, { certificate: record.certificatePem, key: record.keyPem });
    this.#schedule(state, nextRenewal(certificate.notBefore.getTime(), certificate.notAfter.getTime()));
    this.#log.info({ host: state.host, notAfter: iso(state.notAfter), nextRenewal: iso(state.nextAt!) }, 'ACME certificate loaded from the store');
    return true;
  }

  /** One order (first issuance, renewal or retry); never throws: a failure is recorded and retried. */
  #order(state: HostState): Promise<void> {
    state.running ??= this.#runOrder(state).finally(() => {
      state.running = null;
    });
    return state.running;
  }

  async #runOrder(state: HostState): Promise<void> {
    const { host } = state;
    await this.#acquire();
    let locked = false;
    try {
      if (this.#stopped || this.#hosts.get(host) !== state) return;
      // Another node of a fleet (or an earlier run) may have renewed it already.
      const stored = await this.#store.getCertificate(host).catch(() => null);
      if (stored && stored.directory === this.directoryUrl && Date.parse(stored.notAfter) > state.notAfter) {
        const due = nextRenewal(Date.parse(stored.notBefore), Date.parse(stored.notAfter));
        if (due > this.#clock.now() && this.#adopt(state, stored)) return;
      }
      const renewing = state.certificate !== null;
      // In a fleet one node orders a host; the others serve what it stores (certificateChanged), and look
      // again in a while in case it died (its lock frees after node_timeout).
      if (this.#fleet) {
        const holder = await this.#fleet.lock(host);
        if (holder !== null) {
          this.#log.info({ host, node: holder }, 'ACME order left to the node ordering it');
          this.#schedule(state, this.#clock.now() + ORDER_ELSEWHERE_RECHECK_MS);
          return;
        }
        locked = true;
        // It may have stored one between the check above and the lock.
        const now = await this.#store.getCertificate(host).catch(() => null);
        if (now && now.directory === this.directoryUrl && Date.parse(now.notAfter) > state.notAfter) {
          const due = nextRenewal(Date.parse(now.notBefore), Date.parse(now.notAfter));
          if (due > this.#clock.now() && this.#adopt(state, now)) return;
        }
      }
      this.#log.info({ host, renewing, directory: this.directoryUrl }, renewing ? 'ACME renewal started' : 'ACME order started');
      const issued = await this.#issuer.issue(host);
      // Kept even when the gateway is stopping (stop waits for orders under way): an issued certificate
      // thrown away would still count against the CA's limits. A host dropped meanwhile is not served.
      if (this.#hosts.get(host) !== state) return;
      const certificate = Certificate.fromPem(`acme:${host}`, Buffer.from(issued.certificatePem), Buffer.from(issued.keyPem), { now: this.#clock.now() });
      await this.#store.saveCertificate({
        host,
        directory: this.directoryUrl,
        certificatePem: issued.certificatePem,
        keyPem: issued.keyPem,
        notBefore: certificate.notBefore.toISOString(),
        notAfter: certificate.notAfter.toISOString(),
        onDemand: state.onDemand,
        issuedAt: iso(this.#clock.now()),
      });
      state.failures = 0;
      state.lastError = null;
      state.lastErrorAt = null;
      this.#serve(state, certificate, { certificate: issued.certificatePem, key: issued.keyPem });
      this.#schedule(state, nextRenewal(state.notBefore, state.notAfter));
      this.#log.info({ host, notAfter: iso(state.notAfter), nextRenewal: iso(state.nextAt!), fingerprint: certificate.fingerprint256 }, renewing ? 'ACME certificate renewed' : 'ACME certificate obtained');
    } catch (err) {
      if (this.#stopped || this.#hosts.get(host) !== state) return;
      state.failures++;
      state.lastError = errorMessage(err);
      state.lastErrorAt = this.#clock.now();
      this.#schedule(state, this.#clock.now() + retryDelay(state.failures, this.#random, this.#retry));
      const fields = { host, err: state.lastError, failures: state.failures, retryAt: iso(state.nextAt!) };
      if (state.certificate) this.#log.error({ ...fields, notAfter: iso(state.notAfter) }, 'ACME renewal failed, serving the previous certificate');
      else this.#log.error(fields, 'ACME order failed');
      this.#publish(state);
    } finally {
      if (locked) await this.#fleet?.unlock(host).catch((err: unknown) => this.#log.warn({ host, err: errorMessage(err) }, 'ACME order lock not let go of'));
      this.#release();
    }
  }

  async #onDemand(name: string): Promise<boolean> {
    const verdict = await this.#gate.admit(name);
    if (!verdict.ok) {
      // One line per name and refusal window, not per handshake: a flood stays a few lines.
      if (verdict.reason !== 'refused-recently') this.#log.warn({ host: name, reason: verdict.reason, detail: verdict.detail }, 'on-demand certificate refused');
      return false;
    }
    try {
      if (this.#stopped) return false;
      const state = this.#hosts.get(name) ?? this.#newState(name, true);
      await this.#order(state);
      if (state.certificate) return true;
      // A failed order is not retried at every handshake; the name waits like a refused one.
      this.#gate.refuse(name);
      if (state.onDemand) this.#forget(state);
      return false;
    } finally {
      verdict.release();
    }
  }

  #serve(state: HostState, certificate: Certificate, pem: PemPair): void {
    state.certificate = certificate;
    state.notBefore = certificate.notBefore.getTime();
    state.notAfter = certificate.notAfter.getTime();
    this.#publish(state);
    this.#onManaged?.(state.host, pem);
  }

  /** What `berth certs` shows for the host (next renewal, last error) follows the state. */
  #publish(state: HostState): void {
    if (!state.certificate) return;
    this.#certificates.setManaged(state.host, state.certificate, {
      source: state.onDemand ? SOURCE_ON_DEMAND : SOURCE,
      nextRenewal: state.nextAt === null ? null : iso(state.nextAt),
      error: state.lastError,
    });
  }

  #schedule(state: HostState, at: number): void {
    if (state.timer !== null) this.#clock.clearTimeout(state.timer);
    state.timer = null;
    state.nextAt = at;
    this.#publish(state);
    if (this.#stopped) return;
    const arm = () => {
      const wait = at - this.#clock.now();
      if (wait > MAX_TIMER_MS) {
        state.timer = this.#clock.setTimeout(arm, MAX_TIMER_MS);
        return;
      }
      state.timer = this.#clock.setTimeout(() => {
        state.timer = null;
        void this.#order(state);
      }, Math.max(0, wait));
    };
    arm();
  }

  #forget(state: HostState): void {
    if (state.timer !== null) this.#clock.clearTimeout(state.timer);
    state.timer = null;
    if (this.#hosts.get(state.host) === state) this.#hosts.delete(state.host);
    this.#certificates.setManaged(state.host, null);
    this.#onManaged?.(state.host, null);
  }

  async #acquire(): Promise<void> {
    if (this.#slots > 0) {
      this.#slots--;
      return;
    }
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#slots++;
  }
}

function normalise(host: string): string {
  return host.trim().toLowerCase().replace(/\.$/, '');
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
