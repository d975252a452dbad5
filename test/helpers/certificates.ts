/**
 * Real certificates for TLS tests, made with Debian's `openssl` (no mocks): a throwaway CA and leaf
 * certificates it signs, for any list of DNS names (wildcards included). EC P-256 keys, because they are
 * generated in milliseconds where RSA takes a noticeable share of a test's time.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const OPENSSL = '/usr/bin/openssl';

/** A CA made for one test: its certificate (PEM text, for a client's `ca`) and the files that sign with it. */
export interface TestCa {
  /** The CA certificate, PEM. */
  pem: string;
  certificate: string;
  key: string;
  /** Where leaf certificates are made unless told otherwise. */
  dir: string;
}

/** A leaf certificate on disk. */
export interface TestCertificate {
  certificate: string;
  key: string;
  /** The certificate's PEM text (the leaf alone, or leaf + CA when `chain` was asked for). */
  pem: string;
  /** The SHA-256 fingerprint as node's `X509Certificate.fingerprint256` and `getPeerCertificate()` show it. */
  fingerprint256: string;
}

export interface IssueOptions {
  /** Validity in days from now; negative gives a certificate that has already expired. Default 30. */
  days?: number;
  /** Where to write the certificate and key; default `<ca.dir>/<first name>-<random>.crt|.key`. */
  certificate?: string;
  key?: string;
  /** Append the CA certificate after the leaf, as a `fullchain.pem` does. */
  chain?: boolean;
  /** Sign with this CA instead (a CA the client does not trust, say). */
  ca?: TestCa;
  /** More `openssl x509 -extfile` lines, e.g. `tlsfeature=status_request` (OCSP Must-Staple). */
  extensions?: string[];
}

/** Makes a self-signed CA in `dir`. */
export async function createCa(dir: string, name = 'berth test CA'): Promise<TestCa> {
  await mkdir(dir, { recursive: true });
  const tag = randomBytes(4).toString('hex');
  const certificate = join(dir, `ca-${tag}.crt`);
  const key = join(dir, `ca-${tag}.key`);
  await run(OPENSSL, [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', certificate, '-subj', `/CN=${name} ${tag}`, '-days', '3650',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { pem: await readFile(certificate, 'utf8'), certificate, key, dir };
}

/** Issues a leaf certificate for `names` (IP literals go in as IP entries; the first is also the subject CN), signed by `ca`. */
export async function issueCertificate(ca: TestCa, names: string[], options: IssueOptions = {}): Promise<TestCertificate> {
  const signer = options.ca ?? ca;
  const base = join(ca.dir, `${names[0].replace('*', '_wildcard')}-${randomBytes(4).toString('hex')}`);
  const certificate = options.certificate ?? `${base}.crt`;
  const key = options.key ?? `${base}.key`;
  const csr = `${base}.csr`;
  const ext = `${base}.ext`;
  await writeFile(
    ext,
    [
      `subjectAltName=${names.map((n) => (isIP(n) ? `IP:${n}` : `DNS:${n}`)).join(',')}`,
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      ...(options.extensions ?? []),
      '',
    ].join('\n'),
  );
  try {
    await run(OPENSSL, [
      'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', key, '-out', csr, '-subj', `/CN=${names[0]}`,
    ]);
    await run(OPENSSL, [
      'x509', '-req', '-in', csr, '-CA', signer.certificate, '-CAkey', signer.key,
      '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', String(options.days ?? 30),
      '-extfile', ext, '-out', certificate,
    ]);
  } finally {
    await rm(csr, { force: true });
    await rm(ext, { force: true });
  }
  let pem = await readFile(certificate, 'utf8');
  if (options.chain) {
    pem += signer.pem;
    await writeFile(certificate, pem);
  }
  const { stdout } = await run(OPENSSL, ['x509', '-in', certificate, '-noout', '-fingerprint', '-sha256']);
  const fingerprint256 = stdout.trim().replace(/^.*=/, '');
  return { certificate, key, pem, fingerprint256 };
}
