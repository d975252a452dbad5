/**
 * Deploy locks in the state store (FleetStore.acquireLock), so one app has one deploy, rollback or
 * reload in the whole fleet. A lock whose node stopped, or has been silent longer than `node_timeout`,
 * is free. A lock the store would not let go of (it was unreachable) is let go of at the next heartbeat.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import type { DeployLocks } from '../deploy/deployer.ts';
import type { FleetStore } from '../store/store.ts';

export class FleetDeployLocks implements DeployLocks {
  #store: FleetStore;
  #timeoutMs: () => number;
  #log: Logger;
  /** Takings to let go of once the store answers again: token -> lock name. */
  #pending = new Map<string, string>();

  constructor(store: FleetStore, nodeTimeoutMs: () => number, logger: Logger) {
    this.#store = store;
    this.#timeoutMs = nodeTimeoutMs;
    this.#log = logger;
  }

  async acquire(app: string): Promise<string> {
    const token = randomUUID();
    let holder: string | null;
    try {
      holder = await this.#store.acquireLock(lockName(app), new Date(Date.now() - this.#timeoutMs()).toISOString(), token);
    } catch (err) {
      throw new BerthError(ErrorCodes.unavailable, `cannot take the fleet's deploy lock of ${app}: the state store is unreachable (${errorMessage(err)}); nothing was changed`, { cause: err });
    }
    if (holder !== null) throw new BerthError(ErrorCodes.conflict, `a deploy of ${app} is running on node ${holder}`, { details: { node: holder } });
    return token;
  }

  release(app: string, token: string): void {
    const name = lockName(app);
    this.#store.releaseLock(name, token).catch((err) => {
      this.#pending.set(token, name);
      this.#log.warn({ app, err: errorMessage(err) }, 'cannot let go of the deploy lock yet; retrying with the heartbeat');
    });
  }

  /** Lets go of the takings that could not be let go of before (by their tokens); called with each heartbeat. */
  async retry(): Promise<void> {
    for (const [token, name] of [...this.#pending]) {
      await this.#store.releaseLock(name, token);
      this.#pending.delete(token);
    }
  }
}

function lockName(app: string): string {
  return `deploy:${app}`;
}
