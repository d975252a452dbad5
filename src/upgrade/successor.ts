/**
 * `berth upgrade`, the new gateway's side: `berth start` run by the old gateway with UPGRADE_ENV set and
 * an IPC channel to it (handover.ts has the order). The gateway starts as usual but binds no listener
 * and takes no lock: it adopts the instances handed over, answers `ready` with a private probe listener,
 * and only once the old gateway commits does it serve the listening sockets it was handed, take the
 * state lock, and run what the old one held back.
 */
import type { Server as NetServer, Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { VERSION } from '../lib/version.ts';
import type { HandedInstance } from '../supervisor/supervisor.ts';
import { isMessage, Mailbox, pipeKey, send, UPGRADE_ENV, type GenerationState, type HandoverState, type ListenerKind } from './handover.ts';

/** How long the old gateway may take to send its state, and then to commit after `ready`. */
const STATE_TIMEOUT_MS = 60_000;
const COMMIT_TIMEOUT_MS = 120_000;

/** The listening sockets handed over at the commit. */
export interface HandedListeners {
  front: Map<string, NetServer>;
  control: NetServer | null;
  controlTcp: NetServer | null;
}

type Channel = NodeJS.Process & { send: NonNullable<NodeJS.Process['send']> };

export class Successor {
  /** The old gateway's pid. */
  readonly from: number;
  #channel: Channel;
  #mail: Mailbox;
  #state: HandoverState | null = null;
  #pipes = new Map<string, { stdout?: Readable; stderr?: Readable }>();
  /** Connections a handed socket accepted before the gateway served it: served once it does (serve()). */
  #held: { server: NetServer; sockets: Socket[] }[] = [];

  private constructor(channel: Channel, from: number) {
    this.#channel = channel;
    // Before the mailbox's: a handed socket listens from the moment it arrives, and what it accepts must
    // be held at once (a connection nobody listens for is never read, and its socket may be collected).
    channel.on('message', (m: unknown, handle: unknown) => {
      if (isMessage(m, 'listener') && handle !== undefined) this.#hold(handle as NetServer);
    });
    this.#mail = new Mailbox(channel);
    this.from = from;
  }

  /** The successor side when this process was started by an upgrade, else null. */
  static fromEnvironment(): Successor | null {
    const from = Number(process.env[UPGRADE_ENV]);
    delete process.env[UPGRADE_ENV];
    if (!Number.isInteger(from) || from <= 1 || typeof process.send !== 'function') return null;
    return new Successor(process as Channel, from);
  }

  /** The old gateway's state and every instance's pipes. */
  async receiveState(): Promise<HandoverState> {
    const state = await this.#mail.take('the old gateway\'s state', STATE_TIMEOUT_MS, (m) => (isMessage(m, 'state') ? m.state : isMessage(m, 'abort') ? null : undefined));
    if (state === null) throw new BerthError(ErrorCodes.upgrade, 'the old gateway gave up the upgrade');
    for (let left = state.pipes; left > 0; left--) {
      const pipe = await this.#mail.take('the instances\' output pipes', STATE_TIMEOUT_MS, (m, handle) => (isMessage(m, 'pipe') && handle !== undefined ? { m, handle: handle as Readable } : undefined));
      const entry = this.#pipes.get(pipe.m.key) ?? {};
      entry[pipe.m.stream] = pipe.handle;
      this.#pipes.set(pipe.m.key, entry);
    }
    this.#state = state;
    return state;
  }

  /** The instances of one handed generation, with their pipes; an instance whose pipes did not come is left out (it starts anew). */
  instancesOf(gen: GenerationState): HandedInstance[] {
    const out: HandedInstance[] = [];
    for (const info of gen.instances) {
      const pipes = this.#pipes.get(pipeKey(gen.id, info.process, info.index));
      if (pipes?.stdout && pipes.stderr) out.push({ info, stdout: pipes.stdout, stderr: pipes.stderr });
    }
    return out;
  }

  /**
   * Says `ready` (the gateway adopted everything and its health lane answers on `probe`), then waits for
   * the old gateway's commit with the listening sockets. Throws when it aborts or goes away.
   */
  async ready(probe: { host: string; port: number }): Promise<HandedListeners> {
    const handed: HandedListeners = { front: new Map(), control: null, controlTcp: null };
    await send(this.#channel, { t: 'ready', pid: process.pid, version: VERSION, probe });
    let outcome: { abort: string } | { commit: number };
    for (;;) {
      const next = await this.#mail.take('the old gateway\'s commit', COMMIT_TIMEOUT_MS, (m, handle) => {
        if (isMessage(m, 'abort')) return { abort: m.reason };
        if (isMessage(m, 'commit')) return { commit: m.listeners };
        if (isMessage(m, 'listener') && handle !== undefined) return { listener: m, handle: handle as NetServer };
        return undefined;
      });
      if (!('listener' in next)) {
        outcome = next;
        break;
      }
      this.#take(handed, next.listener!.kind, next.listener!.key, next.handle!);
    }
    if ('abort' in outcome) throw new BerthError(ErrorCodes.upgrade, `the old gateway gave up the upgrade: ${outcome.abort}`);
    return handed;
  }

  /** Holds what a handed socket accepts until the gateway serves it (serve()). */
  #hold(server: NetServer): void {
    const held = { server, sockets: [] as Socket[] };
    server.on('connection', (socket: Socket) => {
      // Once the gateway listens on it too, its own handler takes every connection.
      if (server.listenerCount('connection') === 1) held.sockets.push(socket);
    });
    this.#held.push(held);
  }

  #take(handed: HandedListeners, kind: ListenerKind, key: string, server: NetServer): void {
    if (kind === 'front') handed.front.set(key, server);
    else if (kind === 'control') handed.control = server;
    else handed.controlTcp = server;
  }

  /** The gateway serves the handed sockets now: the connections held meanwhile go to it. */
  serve(): void {
    for (const { server, sockets } of this.#held) for (const socket of sockets.splice(0)) server.emit('connection', socket);
  }

  /** Everything is taken over: the old gateway may stop accepting and exit. The channel closes. */
  async committed(): Promise<void> {
    await send(this.#channel, { t: 'committed' });
    this.#channel.disconnect();
  }

  /** Tells the old gateway why this one cannot take over (it keeps everything). Never throws. */
  async failed(error: string): Promise<void> {
    await send(this.#channel, { t: 'failed', error }).catch(() => {});
  }

  /** When the old gateway began holding changes back (scheduled runs due since then run here). */
  get heldSince(): Date {
    return new Date(this.#state?.heldSince ?? Date.now());
  }
}
