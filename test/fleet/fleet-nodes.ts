/**
 * Fleet test nodes: `berth start` child processes on one PostgreSQL database, each with its own state
 * dir, control socket, port and node_id, all with the same app config (as a fleet runs).
 */
import type { TestContext } from 'node:test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, http, spawnGateway, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';

export interface FleetNode extends ChildGateway {
  name: string;
  config: string;
}

/** The shop app every node runs, from `source`. */
export function shopApp(source: string): Record<string, unknown> {
  return { shop: { source, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } }, health: { path: '/up', interval: '250ms' }, timeouts: { drain: '5s' } } };
}

/** Writes node `name`'s config under `dir/name` (state dir, socket) and starts it. */
export async function startNode(t: TestContext, dir: string, url: string, name: string, apps: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<FleetNode> {
  const config = await writeNodeConfig(dir, url, name, apps, extra);
  return { ...(await spawnGateway(t, config)), name, config };
}

export async function writeNodeConfig(dir: string, url: string, name: string, apps: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<string> {
  return writeConfig(join(dir, name), {
    state_dir: 'state',
    database: url,
    node_id: name,
    node_timeout: '5s',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'info' },
    apps,
    ...extra,
  });
}

/** The release a node's front door serves for `/` (null when it does not answer 200). */
export async function servedRelease(node: FleetNode): Promise<string | null> {
  const res = await http({ port: node.port }, { path: '/', timeoutMs: 5_000 }).catch(() => null);
  return res?.status === 200 ? res.json().release : null;
}

/** Waits until every node serves `release`; returns how long that took. */
export async function untilAllServe(nodes: FleetNode[], release: string, timeoutMs = 30_000): Promise<number> {
  const started = Date.now();
  await waitFor(async () => (await Promise.all(nodes.map(servedRelease))).every((r) => r === release), { timeoutMs, intervalMs: 50, message: `every node serving ${release}` });
  return Date.now() - started;
}

/**
 * Requests spread over the nodes by `clients` loops until `stop()`; returns the counts. Every answer that
 * is not 200 (and every connection error) is a failure, kept with its cause.
 */
export function spreadLoad(nodes: FleetNode[], clients = 6): { stop(): Promise<{ ok: number; failed: string[] }> } {
  let running = true;
  let ok = 0;
  const failed: string[] = [];
  const loops = Array.from({ length: clients }, async (_, c) => {
    let i = c;
    while (running) {
      const node = nodes[i++ % nodes.length]!;
      try {
        const res = await http({ port: node.port }, { path: '/', timeoutMs: 10_000 });
        if (res.status === 200) ok++;
        else failed.push(`${node.name}: ${res.status} ${res.body.slice(0, 200)}`);
      } catch (err) {
        failed.push(`${node.name}: ${(err as Error).message}`);
      }
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return { ok, failed };
    },
  };
}

/**
 * `kill -9` of a node's gateway. Its app processes live on (the node reaps them when it starts again);
 * should the test end first, they are killed after it, so no test leaves one behind.
 */
export async function killNode(t: TestContext, node: FleetNode): Promise<void> {
  const apps: any[] = (await node.api('/v1/apps')).apps;
  const groups = apps.flatMap((a) => a.generations.flatMap((g: any) => g.instances.map((i: any) => i.pid))).filter((pid): pid is number => typeof pid === 'number');
  node.proc.kill('SIGKILL');
  await node.exited;
  t.after(() => {
    for (const pgid of groups) {
      try {
        // Only while it is still one of this node's app processes (a pid may be reused meanwhile).
        if (!readFileSync(`/proc/${pgid}/environ`, 'latin1').split('\0').includes('BERTH_APP=shop')) continue;
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  });
}
