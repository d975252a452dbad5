/**
 * Binding a front-door listener: TCP (with SO_REUSEPORT when proxy worker threads share it) or a unix
 * socket, and what to say when that fails.
 */
import { lstat } from 'node:fs/promises';
import type { Server } from 'node:net';
import type { ListenAddress } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { acceptsConnections } from '../lib/unix-socket.ts';

/** Binds `server` to `address`; rejects with the system's error. Accept errors later are logged, never thrown. */
export function listen(server: Server, address: ListenAddress, log: Logger, reusePort: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      // Once bound, an accept error (EMFILE...) must not crash the gateway: it is reported, and Node
      // keeps accepting when it can.
      server.on('error', (err: Error) => log.error({ listen: address.text, err: err.message }, 'listener error'));
      resolve();
    };
    if (address.kind === 'unix') server.listen(address.path, done);
    else server.listen({ port: address.port, host: address.host, reusePort }, done);
  });
}

/** A unix socket file left by a process that died: a socket nobody accepts on. */
export async function isDeadSocket(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => null);
  return st !== null && st.isSocket() && !(await acceptsConnections(path));
}

/** The reason a listen failed, in words. */
export function listenProblem(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'EADDRINUSE':
      return 'address in use';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EADDRNOTAVAIL':
      return 'address not available';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'unknown host';
    case 'ENOENT':
      return 'no such directory';
    default:
      return err instanceof Error ? err.message : String(err);
  }
}
