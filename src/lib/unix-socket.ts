/**
 * Unix socket checks shared by the listeners that must not take over a live socket (the front door's
 * `unix:` listeners, the control socket) and by the state lock's second check.
 */
import { linkSync, renameSync, unlinkSync } from 'node:fs';
import { createConnection, Server } from 'node:net';

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

/**
 * Stops `server` accepting on the unix socket at `path` while the socket file stays. libuv removes the
 * path when a socket it bound there is closed; at an upgrade the new gateway listens on that same socket
 * (handed over as a file descriptor), so the name is kept: a second link to the socket is made, the
 * server closed, and the link renamed back. Between the two a connect finds no socket file for a few
 * microseconds; synchronous calls keep that as short as it can be.
 */
export function closeKeepingPath(server: Server, path: string): void {
  const keep = `${path}.${process.pid}.keep`;
  let linked = false;
  try {
    linkSync(path, keep);
    linked = true;
  } catch {
    // No file there (or no link possible): nothing to keep.
  }
  // net.Server's own close: an http.Server's would also close its idle keep-alive connections.
  Server.prototype.close.call(server);
  if (!linked) return;
  try {
    renameSync(keep, path);
  } catch {
    try {
      unlinkSync(keep);
    } catch {
      // Already gone.
    }
  }
}
