/**
 * Keep-alive connections to instances: one undici `Pool` per upstream address (tcp host:port or unix
 * socket path).
 *
 * Why undici and not node:http with a keep-alive Agent: on loopback, proxying small responses through a
 * minimal node:http front end, undici's `dispatch` measured about 1.45x the requests per second of
 * `http.request` with `new Agent({ keepAlive: true })` (~9.0k vs ~6.2k req/s, 50 connections, 2 cores),
 * with lower tail latency. Its handler interface also lets one per-request object receive every callback
 * (no closures), and it has a per-request headers timeout without a timer per request. Its current
 * handler API (onRequestStart/onResponse*) measured the same as the deprecated raw one within noise, so the
 * supported one is used.
 *
 * An instance that restarts gets a new address, so pools that nobody used between two sweeps and that
 * hold no request are closed.
 */
import { createRequire } from 'node:module';
import type { Pool as PoolType } from 'undici';

/**
 * undici's Pool alone, not the package's index: the index also loads fetch, WebSocket, caches and the
 * rest (about 15 MB more resident memory in every gateway), none of which the proxy uses. The path is
 * part of undici's published files (no `exports` map restricts it) and the lockfile pins the version.
 */
const Pool = createRequire(import.meta.url)('undici/lib/dispatcher/pool.js') as typeof PoolType;
type Pool = PoolType;
import type { UpstreamAddress } from '../supervisor/types.ts';

/** Idle keep-alive connections are dropped after this; below Node's default server keepAliveTimeout (5s). */
const KEEP_ALIVE_TIMEOUT_MS = 4_000;
/** Connecting to a local instance is quick; one that does not accept within this is treated as down. */
const CONNECT_TIMEOUT_MS = 5_000;

interface Entry {
  readonly key: string;
  readonly pool: Pool;
  used: boolean;
  closed: boolean;
}

export class UpstreamClients {
  /** Fast path: the supervisor keeps one address object per live process, so identity finds it. */
  #byAddress = new WeakMap<UpstreamAddress, Entry>();
  #byKey = new Map<string, Entry>();

  /** The pool for an address, created on first use. */
  get(address: UpstreamAddress): Pool {
    let entry = this.#byAddress.get(address);
    if (entry === undefined || entry.closed) {
      const key = address.kind === 'tcp' ? `tcp:${address.host}:${address.port}` : `unix:${address.path}`;
      entry = this.#byKey.get(key);
      if (entry === undefined) {
        entry = { key, pool: createPool(address), used: true, closed: false };
        this.#byKey.set(key, entry);
      }
      this.#byAddress.set(address, entry);
    }
    entry.used = true;
    return entry.pool;
  }

  /** Number of pools open, for tests and status. */
  get size(): number {
    return this.#byKey.size;
  }

  /** Closes pools unused since the last sweep that hold no request. */
  sweep(): void {
    for (const entry of this.#byKey.values()) {
      if (entry.used) {
        entry.used = false;
        continue;
      }
      const stats = entry.pool.stats;
      if (stats.running > 0 || stats.pending > 0) continue;
      entry.closed = true;
      this.#byKey.delete(entry.key);
      void entry.pool.close().catch(() => {});
    }
  }

  /** Drops every connection at once; requests still running fail. */
  async destroy(err?: Error): Promise<void> {
    const entries = [...this.#byKey.values()];
    this.#byKey.clear();
    await Promise.all(
      entries.map((e) => {
        e.closed = true;
        return e.pool.destroy(err ?? null).catch(() => {});
      }),
    );
  }
}

function createPool(address: UpstreamAddress): Pool {
  const opts = { keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS, connect: { timeout: CONNECT_TIMEOUT_MS } };
  if (address.kind === 'unix') return new Pool('http://localhost', { ...opts, socketPath: address.path });
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return new Pool(`http://${host}:${address.port}`, opts);
}
