/**
 * The proxy's listeners as it drives them: a cleartext one (node:http), a TLS one (secure-listener.ts),
 * or either of them on a listening socket another gateway handed over at an upgrade (AdoptedListener).
 */
import type { Server as NetServer, Socket } from 'node:net';
import type { Logger } from '../lib/logger.ts';
import { closeListening } from './secure-listener.ts';

/** What the proxy does with each of its listeners. */
export interface FrontListener {
  /** The server whose connections are served: HTTP/1.1, or TLS with h2. */
  readonly server: NetServer & { closeIdleConnections?(): void };
  /** The server that holds the listening socket (the one an upgrade hands over); `server` unless adopted. */
  readonly accepting: NetServer;
  /** Stops accepting; resolves once every connection is gone. */
  close(): Promise<void>;
  closeIdleConnections(): void;
  closeAllConnections(): void;
}

/** A cleartext listener: node:http, HTTP/1.1. */
export class PlainListener implements FrontListener {
  readonly server: NetServer & { closeIdleConnections(): void; closeAllConnections(): void };

  constructor(server: NetServer & { closeIdleConnections(): void; closeAllConnections(): void }) {
    this.server = server;
  }

  get accepting(): NetServer {
    return this.server;
  }

  close(): Promise<void> {
    return closeListening(this.server);
  }

  closeIdleConnections(): void {
    this.server.closeIdleConnections();
  }

  closeAllConnections(): void {
    this.server.closeAllConnections();
  }
}

/**
 * A listener served on a listening socket the previous gateway handed over at an upgrade (passed as a
 * file descriptor: the same socket, so no connection waiting in its backlog is lost). Node gives it as a
 * listening net.Server of its own; each connection it accepts goes to the inner listener's server as
 * if that one had accepted it (with TCP_NODELAY, as the proxy's own servers set it).
 */
export class AdoptedListener implements FrontListener {
  readonly accepting: NetServer;
  #inner: FrontListener;

  constructor(inner: FrontListener, handed: NetServer, log: Logger, text: string) {
    this.#inner = inner;
    this.accepting = handed;
    handed.on('connection', (socket: Socket) => {
      socket.setNoDelay(true);
      inner.server.emit('connection', socket);
    });
    // What node:http starts when a server begins listening: its connection list, which enforces the
    // header and request timeouts and lets closeIdleConnections() find the idle ones.
    inner.server.emit('listening');
    // An accept error (EMFILE...) is reported, as bind.ts does for the listeners the proxy binds itself.
    handed.on('error', (err: Error) => log.error({ listen: text, err: err.message }, 'listener error'));
  }

  get server(): FrontListener['server'] {
    return this.#inner.server;
  }

  async close(): Promise<void> {
    await Promise.all([closeListening(this.accepting), this.#inner.close()]);
  }

  closeIdleConnections(): void {
    this.#inner.closeIdleConnections();
  }

  closeAllConnections(): void {
    this.#inner.closeAllConnections();
  }
}
