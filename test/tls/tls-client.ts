/**
 * A real TLS echo listener built the way berth's listeners are (the store's server options, `attach`),
 * and a client that reports which certificate it was given. Shared by the tests under test/tls/.
 */
import { once } from 'node:events';
import { connect as tlsConnect, createServer, type ConnectionOptions, type Server, type TLSSocket } from 'node:tls';
import type { TestContext } from 'node:test';
import type { CertificateStore } from '../../src/tls/certificate-store.ts';

/** Starts an echo server on 127.0.0.1:0 that serves the store's certificates; closed after the test. */
export async function startEchoServer(t: TestContext, store: CertificateStore): Promise<{ server: Server; port: number }> {
  const sockets = new Set<TLSSocket>();
  const server = createServer(store.serverOptions(), (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  // Handshakes the tests refuse on purpose end here; they must not fail the test.
  server.on('tlsClientError', () => {});
  const detach = store.attach(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(async () => {
    detach();
    for (const s of sockets) s.destroy();
    server.close();
    await once(server, 'close');
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return { server, port: address.port };
}

export interface Client {
  socket: TLSSocket;
  /** SHA-256 fingerprint of the certificate the server presented. */
  fingerprint: string;
  reused: boolean;
  protocol: string | null;
  authorized: boolean;
  /** Sends a line and waits for its echo: the connection still carries data. */
  ping(): Promise<void>;
  /** The session to resume with (after a ping, so a TLS 1.3 ticket has arrived). */
  session(): Promise<Buffer>;
  close(): void;
}

/**
 * Connects and completes the handshake. Identity is checked by the tests through the fingerprint, so the
 * host name check is off unless `options.checkServerIdentity` is given back.
 */
export async function connectTls(t: TestContext, port: number, options: ConnectionOptions): Promise<Client> {
  const socket = tlsConnect({ host: '127.0.0.1', port, checkServerIdentity: () => undefined, rejectUnauthorized: false, ...options });
  t.after(() => socket.destroy());
  const sessions: Buffer[] = [];
  const sessionWaiters: ((s: Buffer) => void)[] = [];
  socket.on('session', (s: Buffer) => {
    sessions.push(s);
    for (const w of sessionWaiters.splice(0)) w(s);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => {});
  const peer = socket.getPeerCertificate();
  let buffered = '';
  return {
    socket,
    fingerprint: peer.fingerprint256,
    reused: socket.isSessionReused(),
    protocol: socket.getProtocol(),
    authorized: socket.authorized,
    async ping() {
      const line = `ping ${Math.random()}\n`;
      socket.write(line);
      while (!buffered.includes(line)) {
        const [chunk] = (await Promise.race([once(socket, 'data'), once(socket, 'close').then(() => [null])])) as [Buffer | null];
        if (chunk === null) throw new Error('connection closed');
        buffered += chunk.toString();
      }
      buffered = buffered.slice(buffered.indexOf(line) + line.length);
    },
    async session() {
      if (sessions.length > 0) return sessions[0];
      return new Promise<Buffer>((resolve) => sessionWaiters.push(resolve));
    },
    close() {
      socket.end();
    },
  };
}

/** The handshake's error, when it is expected to fail. */
export async function refusedTls(t: TestContext, port: number, options: ConnectionOptions): Promise<NodeJS.ErrnoException> {
  try {
    await connectTls(t, port, options);
  } catch (err) {
    return err as NodeJS.ErrnoException;
  }
  throw new Error('the handshake succeeded');
}
