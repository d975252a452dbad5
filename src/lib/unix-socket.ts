/**
 * Unix socket checks shared by the listeners that must not take over a live socket (the front door's
 * `unix:` listeners, the control socket) and by the state lock's second check.
 */
import { createConnection } from 'node:net';

/** Whether something accepts connections on the unix socket at `path` (a connect succeeds). */
export function acceptsConnections(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection(path);
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}
