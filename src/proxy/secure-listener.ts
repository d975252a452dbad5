/**
 * One TLS listener of the front door: `http2.createSecureServer` with `allowHTTP1`, so a client gets h2
 * or http/1.1 by ALPN, with certificates chosen per handshake by the HandshakeRouter (SNI, TLS-ALPN-01
 * challenges, on-demand names). The certificate store keeps the listener's own context (default
 * certificate, ticket keys) current: a certificate change never closes it.
 *
 * HTTP/1.1 connections on it are node:http connections (same timeouts, same response class, same
 * WebSocket upgrades as the cleartext listeners); h2 sessions are tracked here, because node's http2
 * server has no `closeAllConnections`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createSecureServer, type Http2SecureServer, type Http2ServerRequest, type ServerHttp2Session } from 'node:http2';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { HandshakeRouter } from '../tls/handshake-router.ts';
import { onDemandEligible } from '../tls/on-demand-names.ts';
import { NO_CERTIFICATE, handshakeFailureChannel, handshakeFailureReason } from '../tls/handshake-failure.ts';
import type { Logger } from '../lib/logger.ts';
import type { FrontDoorTls } from '../tls/front-door.ts';
import { H2ProxyResponse, ProxyResponse } from './forward.ts';
import type { RoutingTable } from './router.ts';

export interface ProxyHandlers {
  request: (req: IncomingMessage, res: ServerResponse) => void;
  upgrade: (req: IncomingMessage, socket: Socket, head: Buffer) => void;
  /** Which HTTP/1.1 upgrade requests leave the request path (WebSockets only). */
  shouldUpgrade: (req: IncomingMessage) => boolean;
}

/** The HTTP/1.1 limits the cleartext listeners use (server.ts SERVER_OPTIONS). */
export interface Http1Limits {
  headersTimeout: number;
  requestTimeout: number;
  keepAliveTimeout: number;
  connectionsCheckingInterval: number;
}

/** What node's http2 server reads for its HTTP/1.1 connections but does not declare. */
interface Http1OnSecureServer {
  headersTimeout: number;
  requestTimeout: number;
  keepAliveTimeout: number;
  connectionsCheckingInterval: number;
  shouldUpgradeCallback: (req: IncomingMessage) => boolean;
  closeIdleConnections?: () => void;
}

/**
 * Concurrent streams per h2 session: nginx's `http2_max_concurrent_streams` default. Each stream is a
 * request for admission like any other; this only bounds what one connection can open at once.
 */
const H2_MAX_CONCURRENT_STREAMS = 128;
/**
 * An h2 session with no stream open for this long is closed with a GOAWAY (nginx's keepalive_timeout
 * for h2). node's own session timeout counts any silence, which would cut a quiet SSE stream, so it
 * only triggers the check here.
 */
export const H2_IDLE_TIMEOUT_MS = 75_000;

export type SecureServer = Http2SecureServer<typeof IncomingMessage, typeof ProxyResponse, typeof Http2ServerRequest, typeof H2ProxyResponse>;
/** The proxy's handlers take node:http's shapes; node's h2 compatibility objects implement what they use. */
type H2Handler = (req: Http2ServerRequest, res: H2ProxyResponse) => void;

export class SecureListener {
  readonly server: SecureServer;
  #sockets = new Set<TLSSocket>();
  #sessions = new Set<ServerHttp2Session>();
  #detach: () => void;

  constructor(tls: FrontDoorTls, handlers: ProxyHandlers, limits: Http1Limits, onDemandFor: (servername: string) => boolean, log: Logger) {
    const router = new HandshakeRouter(tls.certificates, { protocols: ['h2', 'http/1.1'], acme: tls.acme, onDemandFor });
    const server = createSecureServer(
      {
        ...tls.certificates.serverOptions(),
        allowHTTP1: true,
        ALPNCallback: router.ALPNCallback,
        SNICallback: router.SNICallback,
        Http1ServerResponse: ProxyResponse,
        Http2ServerResponse: H2ProxyResponse,
        settings: { maxConcurrentStreams: H2_MAX_CONCURRENT_STREAMS, enableConnectProtocol: false },
      },
      handlers.request as unknown as H2Handler,
    );
    const h1 = server as unknown as Http1OnSecureServer;
    h1.headersTimeout = limits.headersTimeout;
    h1.requestTimeout = limits.requestTimeout;
    h1.keepAliveTimeout = limits.keepAliveTimeout;
    h1.connectionsCheckingInterval = limits.connectionsCheckingInterval;
    h1.shouldUpgradeCallback = handlers.shouldUpgrade;
    server.on('upgrade', handlers.upgrade);
    // Expect: 100-continue, h1 or h2: the Forward sends 100 once it wants the body (see server.ts).
    server.on('checkContinue', handlers.request as unknown as H2Handler);
    // A TLS-ALPN-01 validation (acme-tls/1) ends after its handshake; http2 calls it an unknown protocol.
    server.on('unknownProtocol', (socket: TLSSocket) => socket.destroy());
    // Node destroys the socket; what is left to do is to count it by reason, and say so at debug.
    server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
      const reason = handshakeFailureReason(err, (socket as TLSSocket & { [NO_CERTIFICATE]?: true })[NO_CERTIFICATE] === true);
      if (handshakeFailureChannel.hasSubscribers) handshakeFailureChannel.publish({ reason });
      if (log.isLevelEnabled('debug')) log.debug({ reason, code: err.code, err: err.message, servername: (socket as { servername?: string | false }).servername || null, client: socket.remoteAddress ?? null }, 'TLS handshake failed');
    });
    server.on('secureConnection', (socket: TLSSocket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
    server.on('session', (session: ServerHttp2Session) => {
      this.#sessions.add(session);
      session.once('close', () => this.#sessions.delete(session));
      const open = { streams: 0 };
      session.on('stream', (stream) => {
        open.streams++;
        stream.once('close', () => open.streams--);
      });
      // Silence with streams open (a quiet SSE stream) is not idleness; the next frame re-arms the timer.
      session.setTimeout(H2_IDLE_TIMEOUT_MS, () => {
        if (open.streams === 0 && !session.closed) session.close();
      });
    });
    this.server = server;
    this.#detach = tls.certificates.attach(server);
  }

  /** The server that holds the listening socket (front-listener.ts). */
  get accepting(): SecureServer {
    return this.server;
  }

  /**
   * Stops accepting; open h2 sessions get a GOAWAY and close once their streams are done. Resolves when
   * every connection is gone (`closeAllConnections` ends the rest at the stop deadline).
   */
  close(): Promise<void> {
    this.#detach();
    for (const session of this.#sessions) if (!session.closed) session.close();
    return closeListening(this.server);
  }

  /** HTTP/1.1 connections with no request under way (h2 sessions close themselves after GOAWAY). */
  closeIdleConnections(): void {
    (this.server as unknown as Http1OnSecureServer).closeIdleConnections?.();
  }

  /** Ends every connection now, h1 and h2. */
  closeAllConnections(): void {
    for (const session of this.#sessions) session.destroy();
    for (const socket of this.#sockets) socket.destroy();
  }
}

/**
 * Whether a handshake for a name no certificate serves may obtain one on demand: the name routes (as a
 * request for it would) to a wildcard host or a catch-all app with `tls: { acme: true }`. An app's exact
 * hosts get their certificates when they appear, never at a handshake. Runs per such handshake only.
 */
export function onDemandFor(table: RoutingTable, servername: string): boolean {
  return onDemandEligible(table.apps.map((a) => a.config), servername);
}

/** Stops a server accepting; resolves when its last connection is gone (at once when it never listened). */
export function closeListening(server: { readonly listening: boolean; close(cb: () => void): unknown }): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) resolve();
    else server.close(() => resolve());
  });
}
