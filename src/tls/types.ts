/**
 * The normalised shapes the certificate store reads and answers with. They belong with the config schema
 * (src/config/schema.ts) and the wire types (src/api/wire.ts); they wait here until the listeners are
 * wired, so that src/tls/ can be built and tested on its own.
 */

/** A certificate and its key on disk: absolute paths to PEM files. `certificate` may hold the chain after the leaf. */
export interface CertificateFiles {
  certificate: string;
  key: string;
}

/** One configured certificate. */
export interface CertificateSource {
  /**
   * The config key it came from (`apps.shop.tls`, `tls.default_certificate`). Problems are reported as
   * `<from>.certificate: ...` or `<from>.key: ...`, and `berth certs` shows it as the source.
   */
  from: string;
  /**
   * The names it serves: lower-case host names or `*.suffix` wildcards (one label, as TLS matches them).
   * Empty: the DNS names written in the certificate itself.
   */
  hosts: string[];
  files: CertificateFiles;
}

/** Everything the store serves, as config gives it. */
export interface CertificateInput {
  /** Per app and per host. When two name the same host, the first in the list serves it. */
  sources: CertificateSource[];
  /** A directory of certificates (`tls.directory`); each serves the DNS names written in it. */
  directory: string | null;
  /** For clients without SNI and for names nothing else serves; null: those handshakes are refused. */
  defaultCertificate: CertificateSource | null;
}

/** One row of `berth certs` / `GET /v1/certificates`: a name and the certificate a handshake for it gets. */
export interface CertificateRow {
  /** The name as matched: `shop.example.com`, `*.shop.test`, or `*` for the default certificate. */
  host: string;
  /** The config key (`apps.shop.tls`, `tls.directory`, `tls.default_certificate`). */
  source: string;
  /** The certificate file. */
  path: string;
  /** The issuer's distinguished name, one `key=value` per line as node's X509Certificate gives it. */
  issuer: string;
  notBefore: string;
  notAfter: string;
  /** SHA-256 fingerprint of the leaf (colon-separated hex), to tell which certificate is served after a swap. */
  fingerprint: string;
  /** When berth will renew it; null for certificates read from files (their owner renews them). */
  nextRenewal: string | null;
  /** False when the certificate's names do not include this host: clients will reject the handshake. */
  covered: boolean;
  /** The last reload of this source failed and the certificate shown is the previous good one; else null. */
  error: string | null;
}

/** A source whose files could not be (re)loaded. The store keeps serving its previous good certificate. */
export interface CertificateProblem {
  source: string;
  path: string;
  message: string;
  /** ISO time of the failed attempt. */
  since: string;
}

/** What one reload did: the sources that now serve a new certificate, and what failed. */
export interface CertificateReload {
  changed: string[];
  problems: CertificateProblem[];
}

/** A certificate chain and its key, PEM text (what the ACME manager hands proxy worker threads). */
export interface PemPair {
  certificate: string;
  key: string;
}
