/**
 * The gateway's certificates: the certificate store built from config (files per app or host, the
 * certificate directory, the default certificate) and, when a listener is TLS, the ACME manager that
 * obtains certificates for apps with `tls: { acme: true }`. Made at start once the state store is open
 * (ACME keeps its account and certificates there), reconfigured by a config reload (all or nothing,
 * before anything else of the reload applies), and re-read on SIGHUP.
 */
import { readFile } from 'node:fs/promises';
import type { BerthConfig } from '../config/schema.ts';
import { ConfigError, errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import type { Store } from '../store/store.ts';
import { AcmeManager, type AcmeManagerOptions } from '../tls/acme/acme-manager.ts';

/** What the ACME manager tells besides its own work: what proxy worker threads must also serve and answer. */
export type AcmeHooks = Pick<AcmeManagerOptions, 'onHttpTokens' | 'onManaged' | 'onAlpnChallenge' | 'fleet'>;
import { CertificateStore } from '../tls/certificate-store.ts';
import type { FrontDoorTls } from '../tls/front-door.ts';
import type { CertificateRow } from '../tls/types.ts';
import { certificateInput } from '../tls/certificate-input.ts';
import { onDemandEligible } from '../tls/on-demand-names.ts';

export { certificateInput };

/** How long a stop waits for an ACME order in flight before leaving it. */
const ACME_STOP_MS = 5_000;

/** The exact hosts of apps with `tls: { acme: true }`: ordered ahead of time (wildcards wait for a handshake). */
export function acmeHosts(config: BerthConfig): string[] {
  const hosts = new Set<string>();
  for (const app of Object.values(config.apps)) {
    if (!app.acme) continue;
    for (const h of app.hosts) if (!h.startsWith('*.')) hosts.add(h);
  }
  return [...hosts];
}

export class GatewayCertificates {
  readonly frontDoor: FrontDoorTls<AcmeManager>;
  #log: Logger;

  private constructor(frontDoor: FrontDoorTls<AcmeManager>, log: Logger) {
    this.frontDoor = frontDoor;
    this.#log = log;
  }

  /**
   * The certificates for a config with a TLS listener, loaded and checked; null without one. Throws
   * ConfigError naming each bad file (its key in config and its path, never a key's content).
   */
  static async open(config: BerthConfig, store: Store, log: Logger, hooks: AcmeHooks = {}): Promise<GatewayCertificates | null> {
    if (!config.listen.some((a) => a.tls)) return null;
    const certificates = new CertificateStore(certificateInput(config), { logger: log });
    await certificates.start();
    let acme: AcmeManager | null = null;
    try {
      const a = config.acme;
      const caRoot = a.caRoot === null ? null : await readFile(a.caRoot, 'utf8').catch((err: unknown) => {
        throw new ConfigError([{ path: 'acme.ca_root', message: `cannot read ${a.caRoot}: ${errorMessage(err)}` }]);
      });
      acme = new AcmeManager({ directoryUrl: a.directory, email: a.email, caRoot, challenge: a.challenge, ask: a.ask, onDemand: a.onDemand, store, certificates, logger: log, ...hooks });
      await acme.start();
    } catch (err) {
      await certificates.stop();
      throw err;
    }
    const made = new GatewayCertificates({ certificates, acme }, log);
    made.ensure(config);
    return made;
  }

  /** Orders certificates for ACME hosts that have none (at start, on config reload, after a deploy). Never throws. */
  ensure(config: BerthConfig): void {
    const acme = this.frontDoor.acme;
    if (!acme) return;
    const apps = Object.values(config.apps);
    acme.ensure(acmeHosts(config), (name) => onDemandEligible(apps, name)).catch((err: unknown) => this.#log.error({ err: errorMessage(err) }, 'ACME: ordering certificates failed'));
  }

  /**
   * A config reload's certificates: every new or changed file is read and checked first, and a bad one
   * throws ConfigError with nothing changed (so the reload is refused). Unchanged files are read again
   * too, as on SIGHUP: a broken one keeps its previous certificate and is reported.
   */
  async configure(next: BerthConfig): Promise<void> {
    await this.frontDoor.certificates.configure(certificateInput(next));
    await this.reread();
  }

  /** SIGHUP: read every certificate file again; a broken one keeps serving its previous certificate. */
  async reread(): Promise<void> {
    // The store logs each file it could not reload (as it does for a change on disk): not logged twice here.
    await this.frontDoor.certificates.reload();
  }

  /**
   * `berth certs` / `GET /v1/certificates`: every name served, then the ACME hosts that have no
   * certificate yet. Those would otherwise be invisible while their first order fails (the store only
   * knows what it serves); they show with empty dates, issuer and fingerprint, the next attempt as
   * `nextRenewal`, and the order's error, which `berth status` then reports too.
   */
  describe(): CertificateRow[] {
    const rows = this.frontDoor.certificates.describe();
    const acme = this.frontDoor.acme;
    if (!acme) return rows;
    const served = new Set(rows.map((r) => r.host));
    for (const s of acme.status()) {
      if (s.state !== 'pending' || served.has(s.host)) continue;
      rows.push({ host: s.host, source: s.source, path: '', issuer: '', notBefore: '', notAfter: '', fingerprint: '', nextRenewal: s.nextRenewal, covered: false, error: s.lastError });
    }
    return rows;
  }

  /** Each served certificate's expiry as Unix seconds, for `berth_certificate_expiry_timestamp_seconds`. */
  expiry(): { host: string; seconds: number }[] {
    return this.describe().flatMap((r) => (r.notAfter === '' ? [] : [{ host: r.host, seconds: Math.floor(Date.parse(r.notAfter) / 1000) }]));
  }

  async stop(): Promise<void> {
    await this.frontDoor.acme?.stop(ACME_STOP_MS);
    await this.frontDoor.certificates.stop();
  }
}
