/**
 * What the certificate store serves, as a config gives it. The gateway's store is built from it, and
 * `berth check` loads the same files the same strict way before anything starts.
 */
import type { BerthConfig } from '../config/schema.ts';
import type { CertificateInput } from './types.ts';

/** What the certificate store serves, as config gives it: per-host entries first, then whole apps. */
export function certificateInput(config: BerthConfig): CertificateInput {
  const apps = Object.values(config.apps);
  const entries = apps.flatMap((app) => app.tls.map((c) => ({ from: c.from, hosts: c.hosts.length > 0 ? c.hosts : app.hosts, files: c.files, perHost: c.hosts.length > 0 })));
  const sources = [...entries.filter((e) => e.perHost), ...entries.filter((e) => !e.perHost)].map(({ from, hosts, files }) => ({ from, hosts, files }));
  const d = config.tls.defaultCertificate;
  return { sources, directory: config.tls.directory, defaultCertificate: d === null ? null : { from: 'tls.default_certificate', hosts: [], files: d } };
}
