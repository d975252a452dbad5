import { isIP } from 'node:net';
import { createHash, createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { open } from 'node:fs/promises';
import { createSecureContext, type SecureContext } from 'node:tls';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import type { CertificateFiles } from './types.ts';
import { tlsContextOptions } from './server-options.ts';

/** A PEM file larger than this is not a certificate chain or a key; refusing it avoids reading a wrong path whole. */
const MAX_PEM_BYTES = 1024 * 1024;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
/** DER of the OID 1.3.6.1.5.5.7.1.24 (TLS Feature, RFC 7633): in practice only OCSP Must-Staple uses it. */
const MUST_STAPLE_OID = Buffer.from('06082b06010505070118', 'hex');

/** Which file of a pair a problem is about: the config key under the source (`apps.shop.tls.key`). */
export type CertificateField = 'certificate' | 'key';

/** A file of a pair that cannot be served. The message names the file, never its content. */
export class CertificateFileError extends BerthError {
  readonly field: CertificateField;
  readonly path: string;
  /** What is wrong, without the path. */
  readonly reason: string;

  constructor(field: CertificateField, path: string, reason: string, cause?: unknown) {
    super(ErrorCodes.config, `${path}: ${reason}`, { cause, details: { field, path } });
    this.name = 'CertificateFileError';
    this.field = field;
    this.path = path;
    this.reason = reason;
  }
}

/** Facts about a loaded certificate worth a log line, but not a refusal. */
export interface CertificateWarnings {
  mustStaple: boolean;
  keyReadableByOthers: boolean;
  notYetValid: boolean;
}

/**
 * One certificate and its key, checked and turned into a secure context. Immutable: a changed file makes
 * a new Certificate, so an open connection keeps the context it was handed and a new handshake gets
 * the new one. The key is read once, here, into OpenSSL, and the buffer holding it is wiped.
 */
export class Certificate {
  readonly files: CertificateFiles;
  /** DNS names in the certificate (subjectAltName, else the subject's CN), lower-case. */
  readonly names: string[];
  readonly issuer: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly fingerprint256: string;
  /** SHA-256 over both files' bytes: an unchanged pair is not loaded again. */
  readonly digest: string;
  readonly context: SecureContext;
  readonly warnings: CertificateWarnings;
  #x509: X509Certificate;

  private constructor(files: CertificateFiles, x509: X509Certificate, digest: string, context: SecureContext, warnings: CertificateWarnings) {
    this.files = files;
    this.#x509 = x509;
    this.names = dnsNames(x509);
    this.issuer = x509.issuer;
    this.notBefore = x509.validFromDate;
    this.notAfter = x509.validToDate;
    this.fingerprint256 = x509.fingerprint256;
    this.digest = digest;
    this.context = context;
    this.warnings = warnings;
  }

  /**
   * Reads and checks a pair: the certificate parses, has not expired, and the key is the certificate's.
   * `previous` is the pair as last loaded: when neither file changed it is returned as it is.
   * `withServerPem` hands the PEM to the caller (for a listener's own context) before the key is wiped.
   * Throws CertificateFileError naming the file.
   */
  static async load(
    files: CertificateFiles,
    options: { previous?: Certificate | null; now?: number; withServerPem?: (cert: Buffer, key: Buffer) => void } = {},
  ): Promise<Certificate> {
    const cert = await readPem('certificate', files.certificate);
    const key = await readPem('key', files.key);
    return Certificate.#build(files, cert.bytes, key.bytes, key.mode, options);
  }

  /**
   * A certificate held in memory rather than in files (one obtained by ACME and kept in the state store),
   * checked as `load` checks files. `label` stands where a file path would (`berth certs`, errors), e.g.
   * `acme:shop.example.com`. The key buffer is wiped. Throws CertificateFileError naming the label.
   */
  static fromPem(label: string, cert: Buffer, key: Buffer, options: { now?: number } = {}): Certificate {
    return Certificate.#build({ certificate: label, key: label }, cert, key, 0o600, options);
  }

  static #build(
    files: CertificateFiles,
    certBytes: Buffer,
    keyBytes: Buffer,
    keyMode: number,
    options: { previous?: Certificate | null; now?: number; withServerPem?: (cert: Buffer, key: Buffer) => void },
  ): Certificate {
    try {
      const digest = createHash('sha256').update(certBytes).update('\0').update(keyBytes).digest('hex');
      const previous = options.previous;
      if (previous && previous.digest === digest && sameFiles(previous.files, files)) return previous;

      const blocks = certBytes.toString('latin1').match(PEM_CERTIFICATE);
      if (!blocks) throw new CertificateFileError('certificate', files.certificate, 'no PEM certificate (-----BEGIN CERTIFICATE-----) in the file');
      let x509: X509Certificate;
      try {
        x509 = new X509Certificate(blocks[0]);
      } catch (err) {
        throw new CertificateFileError('certificate', files.certificate, `not a valid certificate (${errorMessage(err)})`, err);
      }
      let privateKey: KeyObject;
      try {
        privateKey = createPrivateKey(keyBytes);
      } catch (err) {
        // Node's message names the decoder that failed, never the key; an encrypted key lands here too.
        throw new CertificateFileError('key', files.key, `not a readable unencrypted PEM private key (${errorMessage(err)})`, err);
      }
      if (!x509.checkPrivateKey(privateKey)) {
        throw new CertificateFileError('key', files.key, `the key does not match the certificate ${files.certificate}`);
      }
      const now = options.now ?? Date.now();
      if (x509.validToDate.getTime() <= now) {
        throw new CertificateFileError('certificate', files.certificate, `the certificate expired on ${x509.validToDate.toISOString()}`);
      }
      let context: SecureContext;
      try {
        context = createSecureContext({ ...tlsContextOptions(), cert: certBytes, key: keyBytes });
      } catch (err) {
        throw new CertificateFileError('certificate', files.certificate, `cannot be served (${errorMessage(err)})`, err);
      }
      options.withServerPem?.(certBytes, keyBytes);
      return new Certificate({ ...files }, x509, digest, context, {
        mustStaple: x509.raw.includes(MUST_STAPLE_OID),
        keyReadableByOthers: (keyMode & 0o004) !== 0,
        notYetValid: x509.validFromDate.getTime() > now,
      });
    } finally {
      keyBytes.fill(0);
    }
  }

  /**
   * Whether a client would accept this certificate for `host` (`*.suffix` needs that very wildcard in
   * it; an IP address needs an IP entry, as clients check it).
   */
  covers(host: string): boolean {
    if (host.startsWith('*.')) return this.names.includes(host);
    const ip = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
    if (isIP(ip) !== 0) return this.#x509.checkIP(ip) !== undefined;
    return this.#x509.checkHost(host, { wildcards: true, multiLabelWildcards: false }) !== undefined;
  }
}

function sameFiles(a: CertificateFiles, b: CertificateFiles): boolean {
  return a.certificate === b.certificate && a.key === b.key;
}

/** Reads a PEM file through one descriptor (the size checked is the size read) and notes its mode. */
async function readPem(field: CertificateField, path: string): Promise<{ bytes: Buffer; mode: number }> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new CertificateFileError(field, path, `cannot be read (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})`, err);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new CertificateFileError(field, path, 'not a regular file');
    if (stat.size > MAX_PEM_BYTES) throw new CertificateFileError(field, path, `${stat.size} bytes is too large for a PEM ${field}`);
    const bytes = await handle.readFile();
    if (bytes.length === 0) throw new CertificateFileError(field, path, 'the file is empty');
    return { bytes, mode: stat.mode };
  } finally {
    await handle.close();
  }
}

/** The DNS names a certificate is for: its subjectAltName DNS entries, else its subject CN (old certificates). */
function dnsNames(x509: X509Certificate): string[] {
  const names: string[] = [];
  for (const entry of (x509.subjectAltName ?? '').split(/,\s*/)) {
    if (entry.startsWith('DNS:')) names.push(entry.slice(4).toLowerCase());
  }
  if (names.length === 0) {
    const cn = /^CN=(.+)$/m.exec(x509.subject);
    if (cn) names.push(cn[1].toLowerCase());
  }
  return [...new Set(names)];
}
