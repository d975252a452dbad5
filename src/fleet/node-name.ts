/**
 * A gateway's name in a fleet: `node_id` when the config sets it, else the host name and the state dir
 * (`web-1:/var/lib/berth`), which tells apart two gateways on one machine and stays the same across
 * restarts, so a restarted node takes up its own row, locks and history.
 */
import { hostname } from 'node:os';
import type { BerthConfig } from '../config/schema.ts';

/** Longest name kept (NODE_ID_RE allows 128); a long state dir is cut from the front, keeping its end. */
const MAX_NODE_NAME = 128;

export function nodeName(config: Pick<BerthConfig, 'nodeId' | 'stateDir'>): string {
  if (config.nodeId !== null) return config.nodeId;
  const host = hostname() || 'localhost';
  const name = `${host}:${config.stateDir}`;
  return name.length <= MAX_NODE_NAME ? name : `${host}:…${config.stateDir.slice(-(MAX_NODE_NAME - host.length - 2))}`;
}
