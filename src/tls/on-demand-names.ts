/**
 * Which names on-demand TLS may order: a name no app lists exactly, routed (by the routing table's rule:
 * the longest matching `*.` suffix, else a catch-all app) to an app with `tls: { acme: true }`. The
 * handshake asks it of the live table (proxy/secure-listener.ts); a config reload asks it of the new
 * config, so names no longer routed to an ACME app stop being renewed (gateway/certificates.ts).
 */

/** An app as the rule reads it. */
export interface OnDemandApp {
  readonly hosts: readonly string[];
  readonly acme: boolean;
}

export function onDemandEligible(apps: Iterable<OnDemandApp>, servername: string): boolean {
  let name = servername.toLowerCase();
  if (name.endsWith('.')) name = name.slice(0, -1);
  let wildcard: OnDemandApp | null = null;
  let suffixLength = 0;
  let catchAll: OnDemandApp | null = null;
  for (const app of apps) {
    const hosts = app.hosts;
    if (hosts.length === 0) {
      catchAll ??= app;
      continue;
    }
    for (const host of hosts) {
      if (host === name) return false;
      if (host.startsWith('*.') && name.length > host.length - 1 && name.endsWith(host.slice(1)) && host.length > suffixLength) {
        wildcard = app;
        suffixLength = host.length;
      }
    }
  }
  const app = wildcard ?? catchAll;
  return app !== null && app.acme;
}
