import type { PoolView, Upstream } from './types.ts';

/**
 * The instances of one http process type in one generation. `pick` is on the proxy's hot path: a
 * linear scan over a handful of instances, no allocation. Ties rotate so equal instances share load.
 */
export class Pool implements PoolView {
  readonly process: string;
  readonly concurrency: number;
  instances: readonly Upstream[] = [];
  #next = 0;

  constructor(process: string, concurrency: number) {
    this.process = process;
    this.concurrency = concurrency;
  }

  /** Replaces the instance list (copy on write: readers holding the old array are unaffected). */
  setInstances(instances: readonly Upstream[]): void {
    this.instances = instances;
  }

  pick(exclude?: Upstream): Upstream | null {
    return this.#least(exclude, false);
  }

  acquire(exclude?: Upstream): Upstream | null {
    // Losing the race for an instance's last slot to another thread makes it full: the next scan skips it.
    for (let tries = this.instances.length; tries > 0; tries--) {
      const inst = this.#least(exclude, false);
      if (inst === null) return null;
      if (inst.tryReserve()) return inst;
    }
    return null;
  }

  pickTunnel(exclude?: Upstream): Upstream | null {
    return this.#least(exclude, true);
  }

  /**
   * The ready instance with an address and the least load, starting the scan at a rotating offset so
   * ties spread. Requests: least in flight, skipping full ones. Tunnels: fewest tunnels, with no
   * request-slot bound (they have their own per-pool limit).
   */
  #least(exclude: Upstream | undefined, tunnels: boolean): Upstream | null {
    const list = this.instances;
    const n = list.length;
    if (n === 0) return null;
    const start = this.#next++ % n;
    let best: Upstream | null = null;
    for (let i = 0; i < n; i++) {
      const inst = list[(start + i) % n];
      if (inst === exclude || inst.state !== 'ready' || inst.address === null) continue;
      if (tunnels) {
        if (best === null || inst.tunnels < best.tunnels) best = inst;
      } else if (inst.inFlight < inst.concurrency && (best === null || inst.inFlight < best.inFlight)) best = inst;
    }
    return best;
  }

  serviceable(): boolean {
    for (const inst of this.instances) if (inst.state === 'ready' || inst.state === 'starting') return true;
    return false;
  }

  /** Ready instances, for health reporting. */
  readyCount(): number {
    let n = 0;
    for (const inst of this.instances) if (inst.state === 'ready') n++;
    return n;
  }
}
