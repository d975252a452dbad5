/**
 * The upgrade channel: what the old gateway and the new one it starts say to each other. It is Node's
 * IPC channel (`stdio: 'ipc'`): JSON messages, some carrying a file descriptor (a listening socket, an
 * instance's output pipe), which the kernel duplicates into the new process, so the sockets and pipes
 * themselves never close and nothing queued in them is lost.
 *
 * The order (predecessor.ts drives it, successor.ts answers):
 *  1. old -> new `state`, then one `pipe` per output pipe of every running instance;
 *  2. new -> old `ready` (it adopted the instances and serves a private probe listener) or `failed`;
 *  3. old: probes the new one's health lane; on success one `listener` per listening socket, then `commit`;
 *  4. new -> old `committed`: it serves the sockets and holds the state lock. The old one stops
 *     accepting, drains what it has in flight, and exits. Before `committed`, `abort` (or the channel
 *     closing) ends the new one and the old one keeps everything.
 */
import type { ChildProcess } from 'node:child_process';
import type { Server as NetServer, Socket } from 'node:net';
import type { InstanceHandover } from '../supervisor/instance.ts';
import type { GenerationHandover } from '../supervisor/supervisor.ts';

/** Set in the new gateway's environment: the old one's pid. `berth start` then takes over from it. */
export const UPGRADE_ENV = 'BERTH_UPGRADE_FROM';

/** One app's generation, as the `state` message carries it (its pipes follow in `pipe` messages). */
export interface GenerationState extends Omit<GenerationHandover, 'instances'> {
  instances: InstanceHandover[];
  /** Instance count of each process type (instances not running now are started by the new gateway). */
  counts: Record<string, number>;
}

/** What the old gateway tells the new one first. */
export interface HandoverState {
  from: { pid: number; version: string };
  /** When the old gateway began holding changes back: scheduled runs due since then run in the new one. */
  heldSince: string;
  generations: GenerationState[];
  /** How many `pipe` messages follow. */
  pipes: number;
}

export type ListenerKind = 'front' | 'control' | 'control-tcp';

export type ToSuccessor =
  | { t: 'state'; state: HandoverState }
  /** Carries a pipe: `key` is `<generation id>/<process>.<index>`. */
  | { t: 'pipe'; key: string; stream: 'stdout' | 'stderr' }
  /** Carries a listening socket: `key` names a `front` one by its place in `listen` and its text. */
  | { t: 'listener'; kind: ListenerKind; key: string }
  | { t: 'commit'; listeners: number }
  | { t: 'abort'; reason: string };

export type ToPredecessor =
  | { t: 'ready'; pid: number; version: string; probe: { host: string; port: number } }
  | { t: 'failed'; error: string }
  | { t: 'committed' };

/** The key of one instance's pipes. */
export function pipeKey(generation: string, process: string, index: number): string {
  return `${generation}/${process}.${index}`;
}

/** Either end of the channel: the new gateway's `process`, or the old one's ChildProcess of it. */
type Channel = Pick<ChildProcess, 'send' | 'connected'> & NodeJS.EventEmitter;

/** Sends a message, with a socket or pipe when given; resolves once Node has handed it to the channel. */
export function send(channel: Channel, message: ToSuccessor | ToPredecessor, handle?: NetServer | Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!channel.connected) return reject(new Error('the upgrade channel is closed'));
    const done = (err: Error | null) => (err ? reject(err) : resolve());
    // keepOpen: the old gateway goes on reading a pipe (or accepting) until the new one has committed.
    if (handle === undefined) channel.send(message, done);
    else channel.send(message, handle as Socket, { keepOpen: true }, done);
  });
}

/**
 * Every message the channel brings, kept until taken: the old gateway sends several at once (its state
 * then every pipe), and a message Node emits while nobody listens would be lost.
 */
export class Mailbox {
  #channel: Channel;
  #queue: { message: unknown; handle: unknown }[] = [];
  #wake: (() => void) | null = null;
  #closed = false;

  constructor(channel: Channel) {
    this.#channel = channel;
    channel.on('message', (message: unknown, handle: unknown) => {
      this.#queue.push({ message, handle });
      this.#wake?.();
    });
    channel.once('disconnect', () => {
      this.#closed = true;
      this.#wake?.();
    });
  }

  /**
   * The first message, kept or to come, that `accept` takes (it returns undefined for others, which stay
   * for a later take), with its handle; rejects when the channel closes first or `timeoutMs` passes.
   */
  async take<T>(what: string, timeoutMs: number, accept: (message: unknown, handle: unknown) => T | undefined): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = 0; i < this.#queue.length; i++) {
        const taken = accept(this.#queue[i].message, this.#queue[i].handle);
        if (taken === undefined) continue;
        this.#queue.splice(i, 1);
        return taken;
      }
      if (this.#closed) throw new Error(`the upgrade channel closed before ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${Math.round(timeoutMs / 1000)}s`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }
}

/** Whether `m` is a message of type `t` (messages cross a process boundary: checked, not trusted). */
export function isMessage<K extends (ToSuccessor | ToPredecessor)['t']>(m: unknown, t: K): m is Extract<ToSuccessor | ToPredecessor, { t: K }> {
  return typeof m === 'object' && m !== null && (m as { t?: unknown }).t === t;
}
