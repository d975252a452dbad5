import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { UpstreamAddress } from './types.ts';

const PROBE_HEADERS = { host: 'localhost', 'user-agent': 'berth-health', connection: 'close' };

/**
 * One probe of an instance, sent directly to its address (never through the proxy or its queue).
 * With a `path`: a GET that passes on any 2xx. Without: a TCP or unix-socket connect that passes when
 * it is accepted. Bounded by `timeoutMs` from start to the response headers. Never rejects.
 */
export function probe(address: UpstreamAddress, path: string | null, timeoutMs: number): Promise<boolean> {
  return path === null ? connectProbe(address, timeoutMs) : httpProbe(address, path, timeoutMs);
}

function connectProbe(address: UpstreamAddress, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket: Socket = address.kind === 'tcp' ? connect(address.port, address.host) : connect(address.path);
    const timer = setTimeout(() => finish(false), timeoutMs);
    function finish(ok: boolean): void {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    }
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

function httpProbe(address: UpstreamAddress, path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    const req = request(
      address.kind === 'tcp'
        ? { host: address.host, port: address.port, path, method: 'GET', agent: false, headers: PROBE_HEADERS }
        : { socketPath: address.path, path, method: 'GET', agent: false, headers: PROBE_HEADERS },
      (res) => {
        const status = res.statusCode ?? 0;
        res.resume();
        finish(status >= 200 && status < 300);
      },
    );
    const timer = setTimeout(() => finish(false), timeoutMs);
    function finish(ok: boolean): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.destroy();
      resolve(ok);
    }
    req.once('error', () => finish(false));
    req.end();
  });
}
