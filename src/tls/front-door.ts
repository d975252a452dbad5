/**
 * What the proxy's listeners need for HTTPS: the certificates chosen by SNI and, when any app uses
 * ACME, the manager that answers challenges (HTTP-01 on cleartext listeners, TLS-ALPN-01 on TLS ones)
 * and decides on-demand names. The gateway builds both (the ACME manager needs the store) and hands
 * them to `Proxy.start`.
 */
import type { CertificateStore } from './certificate-store.ts';
import type { AcmeManager } from './acme/acme-manager.ts';

export interface FrontDoorTls {
  certificates: CertificateStore;
  /** Made whenever a listener is TLS (a config reload may add ACME apps); null only in tests without ACME. */
  acme: AcmeManager | null;
}
