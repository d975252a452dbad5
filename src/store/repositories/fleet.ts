/** Fleet nodes, locks, once-only claims and shared ACME answers (migration 007), for every backend. */
import type { FleetStore, NodeRecord } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import { NODES, nodeValues } from '../records.ts';
import { upsert } from '../statements.ts';

const SAVE_NODE_SQL = upsert(NODES.name, NODES.columns, ['node']);

/**
 * One statement, so two nodes asking at once cannot both get it: the row is taken over only when it is
 * this node's already, or its holder stopped or has been silent since $4.
 */
const ACQUIRE_SQL = `INSERT INTO fleet_locks (name, node, acquired_at, token) VALUES ($1, $2, $3, $5)
  ON CONFLICT (name) DO UPDATE SET node = excluded.node, acquired_at = excluded.acquired_at, token = excluded.token
  WHERE fleet_locks.node = excluded.node OR NOT EXISTS (
    SELECT 1 FROM nodes WHERE nodes.node = fleet_locks.node AND nodes.state = 'running' AND nodes.heartbeat_at >= $4)
  RETURNING node`;

const PUT_CHALLENGE_SQL = upsert('acme_challenges', ['token', 'key_authorization', 'created_at'], ['token']);

export class Fleet implements Omit<FleetStore, 'node' | 'watch'> {
  #db: StoreDatabase;
  #node: string;

  constructor(db: StoreDatabase, node: string) {
    this.#db = db;
    this.#node = node;
  }

  async saveNode(node: NodeRecord): Promise<void> {
    await this.#db.changes('save node', SAVE_NODE_SQL, nodeValues(node));
  }

  async listNodes(): Promise<NodeRecord[]> {
    return this.#db.all('list nodes', `${NODES.select} ORDER BY node`, [], NODES.fromRow);
  }

  async deleteNodesBefore(before: string): Promise<number> {
    return this.#db.changes('delete nodes', 'DELETE FROM nodes WHERE heartbeat_at < $1', [before]);
  }

  async acquireLock(name: string, staleBefore: string, token: string | null = null): Promise<string | null> {
    const take = () => this.#db.rows('take a fleet lock', ACQUIRE_SQL, [name, this.#node, new Date().toISOString(), staleBefore, token]);
    if ((await take()).length > 0) return null;
    const holder = await this.#db.rows('read a fleet lock', 'SELECT node FROM fleet_locks WHERE name = $1', [name]);
    // Let go between the two statements: try once more rather than name nobody.
    if (holder.length === 0) return (await take()).length > 0 ? null : 'another node';
    return String(holder[0]!.node);
  }

  async releaseLock(name: string, token: string | null = null): Promise<void> {
    if (token === null) await this.#db.changes('release a fleet lock', 'DELETE FROM fleet_locks WHERE name = $1 AND node = $2', [name, this.#node]);
    else await this.#db.changes('release a fleet lock', 'DELETE FROM fleet_locks WHERE name = $1 AND node = $2 AND token = $3', [name, this.#node, token]);
  }

  async listChallenges(): Promise<[key: string, value: string][]> {
    const rows = await this.#db.rows('list ACME answers', 'SELECT token, key_authorization FROM acme_challenges ORDER BY token', []);
    return rows.map((r) => [String(r.token), String(r.key_authorization)]);
  }

  async releaseAllLocks(): Promise<number> {
    return this.#db.changes('release fleet locks', 'DELETE FROM fleet_locks WHERE node = $1', [this.#node]);
  }

  async claimOnce(claim: string): Promise<boolean> {
    const sql = 'INSERT INTO fleet_claims (claim, node, claimed_at) VALUES ($1, $2, $3) ON CONFLICT (claim) DO NOTHING';
    return (await this.#db.changes('claim', sql, [claim, this.#node, new Date().toISOString()])) === 1;
  }

  async deleteClaimsBefore(before: string): Promise<number> {
    return this.#db.changes('delete claims', 'DELETE FROM fleet_claims WHERE claimed_at < $1', [before]);
  }

  async putChallenge(token: string, keyAuthorization: string): Promise<void> {
    await this.#db.changes('save an ACME answer', PUT_CHALLENGE_SQL, [token, keyAuthorization, new Date().toISOString()]);
  }

  async getChallenge(token: string): Promise<string | null> {
    const rows = await this.#db.rows('read an ACME answer', 'SELECT key_authorization FROM acme_challenges WHERE token = $1', [token]);
    return rows.length > 0 ? String(rows[0]!.key_authorization) : null;
  }

  async deleteChallenge(token: string): Promise<void> {
    await this.#db.changes('delete an ACME answer', 'DELETE FROM acme_challenges WHERE token = $1', [token]);
  }
}
