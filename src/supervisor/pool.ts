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
    const list = this.instances;
    const n = list.length;
    if (n === 0) return null;
    const start = this.#next++ % n;
    let best: Upstream | null = null;
    for (let i = 0; i < n; i++) {
      const inst = list[(start + i) % n];
      if (inst === exclude || inst.state !== 'ready' || inst.address === null) continue;
      if (inst.inFlight >= inst.concurrency) continue;
      if (best === null || inst.inFlight < best.inFlight) best = inst;
    }
    return best;
  }

  pickTunnel(exclude?: Upstream): Upstream | null {
    const list = this.instances;
    const n = list.length;
    if (n === 0) return null;
    const start = this.#next++ % n;
    let best: Upstream | null = null;
    for (let i = 0; i < n; i++) {
      const inst = list[(start + i) % n];
      if (inst === exclude || inst.state !== 'ready' || inst.address === null) continue;
      if (best === null || inst.tunnels < best.tunnels) best = inst;
    }
    return best;
  }

  /** Ready instances, for health reporting. */
  readyCount(): number {
    let n = 0;
    for (const inst of this.instances) if (inst.state === 'ready') n++;
    return n;
  }
}
