/**
 * ACME across a fleet (tls/acme/fleet-share.ts) over the state store: the order lock of a host is a
 * fleet lock (`acme:<host>`, free once its node is silent for node_timeout), and challenge answers are
 * rows every node hears of (migration 007's `challenge:` notifications) and answers from memory.
 */
import type { AcmeFleet } from '../tls/acme/fleet-share.ts';
import type { FleetStore } from '../store/store.ts';

export class AcmeSharing implements AcmeFleet {
  #store: FleetStore;
  #timeoutMs: () => number;

  constructor(store: FleetStore, nodeTimeoutMs: () => number) {
    this.#store = store;
    this.#timeoutMs = nodeTimeoutMs;
  }

  lock(host: string): Promise<string | null> {
    return this.#store.acquireLock(`acme:${host}`, new Date(Date.now() - this.#timeoutMs()).toISOString());
  }

  unlock(host: string): Promise<void> {
    return this.#store.releaseLock(`acme:${host}`);
  }

  share(key: string, value: string): Promise<void> {
    return this.#store.putChallenge(key, value);
  }

  unshare(key: string): Promise<void> {
    return this.#store.deleteChallenge(key);
  }

  read(key: string): Promise<string | null> {
    return this.#store.getChallenge(key);
  }

  readAll(): Promise<[key: string, value: string][]> {
    return this.#store.listChallenges();
  }
}
