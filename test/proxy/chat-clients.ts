/**
 * socket.io 4 clients (the npm package) for the affinity tests, against the fixture app
 * test/fixtures/apps/socketio behind a real gateway: each client counts its acknowledged emits, the
 * instance and release that answered each, and every failure, disconnect and connect error.
 */
import { io, type Socket } from 'socket.io-client';
import { join } from 'node:path';
import { cp } from 'node:fs/promises';
import { ROOT } from '../helpers/gateway.ts';
import type { Gateway } from '../../src/gateway.ts';

export const CHAT_FIXTURE = join(ROOT, 'test/fixtures/apps/socketio');
/** The command that runs the fixture with this Node. */
export const CHAT_COMMAND = `"${process.execPath}" server.mjs`;
/**
 * What the fixture loads socket.io through (its releases are copies outside the checkout), and a ping
 * every 5 s rather than 25 s, so a long poll a client left behind ends soon when a test stops.
 */
export const CHAT_ENV = { SOCKET_IO_FROM: join(ROOT, 'package.json'), PING_INTERVAL_MS: '5000' };

/** Copies the fixture into `<dir>/<name>` and returns its path. */
export async function chatSource(dir: string, name = 'chat-src'): Promise<string> {
  const dest = join(dir, name);
  await cp(CHAT_FIXTURE, dest, { recursive: true });
  return dest;
}

/** Whether the app's active generation has every instance ready. */
export function activeInstancesReady(gateway: Gateway, app = 'chat'): boolean {
  const active = gateway.appStatus(app)?.generations.find((g) => g.active);
  return active !== undefined && active.instances.length > 0 && active.instances.every((i) => i.state === 'ready');
}

export type Transports = ('polling' | 'websocket')[];

/** An acknowledged emit: what the instance said, and when the answer came. */
export interface Ack {
  n: number;
  release: string;
  instance: number;
  pid: number;
  transport: string;
  at: number;
}

export class ChatClient {
  readonly socket: Socket;
  readonly acks: Ack[] = [];
  /** Emits that got no acknowledgement (timeout, or the session ended under them). */
  readonly failures: { n: number; at: number; error: string }[] = [];
  readonly disconnects: { at: number; reason: string }[] = [];
  readonly connectErrors: { at: number; error: string }[] = [];

  /** Opens a session (polling first; with `websocket` in `transports`, upgraded as socket.io does). */
  constructor(port: number, transports: Transports, opts: { reconnection?: boolean } = {}) {
    this.socket = io(`http://127.0.0.1:${port}`, {
      transports,
      forceNew: true,
      // In Node, this keeps cookies (the affinity cookie among them) as a browser does.
      withCredentials: true,
      reconnection: opts.reconnection ?? true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      timeout: 5_000,
    });
    // Its own close() is not counted.
    this.socket.on('disconnect', (reason) => reason !== 'io client disconnect' && this.disconnects.push({ at: Date.now(), reason }));
    this.socket.on('connect_error', (err) => this.connectErrors.push({ at: Date.now(), error: err.message }));
  }

  /** Resolves once connected; rejects after `timeoutMs`. */
  connected(timeoutMs = 10_000): Promise<void> {
    if (this.socket.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not connected after ${timeoutMs}ms: ${this.connectErrors.map((e) => e.error).join(', ')}`)), timeoutMs);
      this.socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** One emit, acknowledged within `timeoutMs`; a failure is counted and gives null. */
  async emit(n: number, timeoutMs = 4_000): Promise<Ack | null> {
    try {
      const answer = (await this.socket.timeout(timeoutMs).emitWithAck('echo', n)) as Omit<Ack, 'at'>;
      const ack = { ...answer, at: Date.now() };
      this.acks.push(ack);
      return ack;
    } catch (err) {
      this.failures.push({ n, at: Date.now(), error: (err as Error).message });
      return null;
    }
  }

  /**
   * `count` acknowledged emits, one after another, `gapMs` apart. An emit that fails is counted and sent
   * again once the client is connected, up to 5 times.
   */
  async run(count: number, gapMs = 0): Promise<void> {
    for (let n = 0; n < count; n++) {
      for (let attempt = 0; ; attempt++) {
        if ((await this.emit(n)) !== null) break;
        if (attempt === 4) throw new Error(`emit ${n} failed 5 times: ${this.failures.map((f) => f.error).join(', ')}`);
        await this.connected();
      }
      if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
    }
  }

  close(): void {
    this.socket.disconnect();
  }
}
