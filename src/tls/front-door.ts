/**
 * What the proxy's listeners need for HTTPS: the certificates chosen by SNI and, when any app uses
 * ACME, the manager that answers challenges (HTTP-01 on cleartext listeners, TLS-ALPN-01 on TLS ones)
 * and decides on-demand names. The gateway builds both (the ACME manager needs the store) and hands
 * them to `Proxy.start`; a proxy worker thread hands its own (its store, and a stand-in for the manager
 * that asks the main thread: proxy/worker-thread.ts).
 */
import type { CertificateStore } from './certificate-store.ts';
import type { HandshakeAcme } from './handshake-router.ts';

/** What the listeners ask of ACME: TLS-ALPN-01 contexts, on-demand names, HTTP-01 answers. */
export interface FrontDoorAcme extends HandshakeAcme {
  answerHttp(path: string): string | null;
}

export interface FrontDoorTls<A extends FrontDoorAcme = FrontDoorAcme> {
  certificates: CertificateStore;
  /** Made whenever a listener is TLS (a config reload may add ACME apps); null only in tests without ACME. */
  acme: A | null;
}
