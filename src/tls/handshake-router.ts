/**
 * The two callbacks a TLS listener hands every handshake to, so that one listener serves ACME's
 * TLS-ALPN-01 challenges, on-demand certificates and ordinary SNI alike. Pass both to
 * `http2.createSecureServer` (with `allowHTTP1`), `https.createServer` or `tls.createServer`, with
 * the CertificateStore's `serverOptions()` and without `ALPNProtocols` (node refuses both at once).
 *
 * Node calls the ALPN callback before the SNI callback, on the same TLSSocket (`this` in both), so the
 * ALPN callback marks a socket that offers `acme-tls/1` for a name with a pending challenge, and the SNI
 * callback then hands it the challenge certificate. Every other handshake never sees it (RFC 8737 §4:
 * only a client offering `acme-tls/1` alone gets the challenge certificate).
 */
import type { SecureContext, TLSSocket } from 'node:tls';
import type { CertificateStore } from './certificate-store.ts';
import { ACME_TLS_ALPN_PROTOCOL } from './acme/acme-issuer.ts';
import { NO_CERTIFICATE } from './handshake-failure.ts';

/** What the router needs of the ACME manager (acme/acme-manager.ts). */
export interface HandshakeAcme {
  alpnChallengeContext(servername: string): SecureContext | null;
  onDemand(servername: string): Promise<boolean>;
}

export interface HandshakeRouterOptions {
  /** The application protocols served, in preference order: `['h2', 'http/1.1']` or `['http/1.1']`. */
  protocols: readonly string[];
  acme: HandshakeAcme | null;
  /** Whether a name no certificate serves may be obtained on demand (it routes to a wildcard or catch-all app with ACME). */
  onDemandFor?: (servername: string) => boolean;
}

const ACME_HANDSHAKE = Symbol('berth.acmeHandshake');

type MarkedSocket = TLSSocket & { [ACME_HANDSHAKE]?: true; [NO_CERTIFICATE]?: true };
export type AlpnCallback = (this: TLSSocket, arg: { servername: string; protocols: string[] }) => string | undefined;
export type RoutedSniCallback = (this: TLSSocket, servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void;

export class HandshakeRouter {
  readonly ALPNCallback: AlpnCallback;
  readonly SNICallback: RoutedSniCallback;

  constructor(certificates: CertificateStore, options: HandshakeRouterOptions) {
    const { protocols, acme } = options;
    const onDemandFor = options.onDemandFor ?? (() => false);

    this.ALPNCallback = function (this: MarkedSocket, { servername, protocols: offered }) {
      if (acme && offered.length === 1 && offered[0] === ACME_TLS_ALPN_PROTOCOL && servername && acme.alpnChallengeContext(servername)) {
        this[ACME_HANDSHAKE] = true;
        return ACME_TLS_ALPN_PROTOCOL;
      }
      for (const p of protocols) if (offered.includes(p)) return p;
      return undefined; // no protocol in common: node ends the handshake with no_application_protocol
    };

    this.SNICallback = function (this: MarkedSocket, servername, cb) {
      if (this[ACME_HANDSHAKE]) {
        cb(null, acme?.alpnChallengeContext(servername) ?? undefined);
        return;
      }
      const answer = (): void => {
        const context = certificates.select(servername);
        // No certificate: the handshake fails; its failure is counted as `unknown-name`.
        if (context === null) (this as MarkedSocket)[NO_CERTIFICATE] = true;
        cb(null, context ?? undefined);
      };
      if (acme === null || !servername || certificates.serves(servername) || !onDemandFor(servername)) {
        answer();
        return;
      }
      acme.onDemand(servername).then(answer, answer);
    };
  }
}
