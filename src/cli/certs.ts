import type { CertificateRow } from '../api/wire.ts';
import { CLIENT_OPTIONS, clientFor, parse } from './options.ts';
import { formatTable } from './table.ts';

export const CERTS_USAGE = 'berth certs [--json] [--socket PATH | --config F]';

/** The issuer's common name (or organisation), short enough for a table; the full DN is in --json. */
function shortIssuer(issuer: string): string {
  const field = (key: string) => issuer.split('\n').find((l) => l.startsWith(`${key}=`))?.slice(key.length + 1);
  return field('CN') ?? field('O') ?? issuer.split('\n')[0] ?? '';
}

/** `berth certs`: each host the TLS listeners serve, with its certificate's source, issuer, expiry and next renewal. */
export async function certs(args: string[]): Promise<number> {
  const { values } = parse(args, CLIENT_OPTIONS);
  const client = await clientFor(values);
  const { certificates } = await client.call<{ certificates: CertificateRow[] }>('GET', '/v1/certificates');
  if (values.json) {
    process.stdout.write(JSON.stringify({ certificates }, null, 2) + '\n');
    return 0;
  }
  if (certificates.length === 0) {
    process.stdout.write('no certificates: no listener is TLS\n');
    return 0;
  }
  // A row without a fingerprint is an ACME host still waiting for its first certificate.
  const rows = certificates.map((c) => [
    c.host,
    c.source,
    c.fingerprint === '' ? '-' : shortIssuer(c.issuer),
    c.fingerprint === '' ? '-' : c.notAfter,
    c.nextRenewal ?? '-',
    c.error ? `error: ${c.error}` : c.fingerprint === '' ? 'no certificate yet' : c.covered ? 'ok' : 'does not name this host',
  ]);
  process.stdout.write(formatTable(['host', 'source', 'issuer', 'expires', 'next renewal', 'state'], rows) + '\n');
  return 0;
}
