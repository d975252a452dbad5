import { randomBytes } from 'node:crypto';
import { TLS_TICKET_KEY_ROTATION_MS } from './server-options.ts';

/** Node's ticket key: 16 bytes of name, 16 of HMAC secret, 16 of AES key. */
const TICKET_KEY_BYTES = 48;

/**
 * The session ticket key every TLS listener of this process shares, replaced on a timer. Listeners
 * subscribe with `onRotate` and set the new key with `server.setTicketKeys`. Several processes on the same
 * listeners (proxy workers, a fleet) resume each other's sessions only if they are handed the same key
 * through `rotate(key)`.
 */
export class TicketKeys {
  #key: Buffer = randomBytes(TICKET_KEY_BYTES);
  #everyMs: number;
  #timer: NodeJS.Timeout | null = null;
  #listeners = new Set<(key: Buffer) => void>();

  constructor(everyMs = TLS_TICKET_KEY_ROTATION_MS) {
    this.#everyMs = everyMs;
  }

  /** The key new tickets are sealed with. */
  get current(): Buffer {
    return this.#key;
  }

  /** Starts the rotation timer; it does not keep the process alive. */
  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.rotate(), this.#everyMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Replaces the key (with `key`, or a fresh random one) and tells every listener. */
  rotate(key: Buffer = randomBytes(TICKET_KEY_BYTES)): void {
    if (key.length !== TICKET_KEY_BYTES) throw new RangeError(`a ticket key is ${TICKET_KEY_BYTES} bytes, got ${key.length}`);
    this.#key = key;
    for (const listener of this.#listeners) listener(key);
  }

  /** Calls `listener` with each new key; returns the unsubscribe function. */
  onRotate(listener: (key: Buffer) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
