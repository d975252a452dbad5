/**
 * The messages between the main thread and its proxy worker threads (`proxy.workers`): what each side
 * posts, as plain data. proxy-workers.ts is the main thread's side, worker-thread.ts the worker's.
 */
import type { MessagePort } from 'node:worker_threads';
import type { BerthConfig, ListenAddress } from '../config/schema.ts';
import type { SharedCellsHandle } from '../lib/shared-cells.ts';
import type { AdmissionRejection } from './admission.ts';
import type { AffinityOutcome } from './affinity.ts';
import type { SharedTables, TableSnapshot } from './mirror.ts';
import type { PemPair } from '../tls/types.ts';

/** What a worker thread starts with. */
export interface WorkerData {
  cells: SharedCellsHandle;
  /** Its index in the cells: 1.. (0 is the main thread). */
  thread: number;
  /** Proxy threads in all, the main thread included. */
  threads: number;
  config: BerthConfig;
  /** The cleartext TCP listeners, ports resolved: it binds them too (SO_REUSEPORT). */
  listen: ListenAddress[];
  table: TableSnapshot;
  /** The G_STATE_VERSION cell's value that `table` and `config` are as of. */
  version: number;
  /** Where StateMessages come, read synchronously (receiveMessageOnPort) when the version cell moves. */
  state: MessagePort;
  /** Pending ACME HTTP-01 answers (token, key authorization). */
  challenges: [string, string][];
  /**
   * When the TLS listeners are shared (no app uses ACME): the session ticket key now. The thread loads
   * the certificate files itself, from the config, as the main thread does.
   */
  ticketKey: Buffer | null;
  /** ACME certificates served now, by host (the worker's own store serves them too). */
  managed: [string, PemPair][];
  /** TLS-ALPN-01 challenge certificates pending, by host. */
  alpn: [string, PemPair][];
}


/**
 * A new table or config. The main thread posts it, then sets G_STATE_VERSION to `version`; a worker
 * that sees the cell ahead of what it applied reads its state port before the request it is handling.
 */
export type StateMessage = { version: number } & (
  | { type: 'table'; table: TableSnapshot }
  | { type: 'config'; config: BerthConfig; tables: SharedTables }
  | { type: 'challenges'; tokens: [string, string][] }
  | { type: 'ticket-key'; key: Buffer }
  | { type: 'managed'; host: string; pem: PemPair | null }
  | { type: 'alpn'; host: string; pem: PemPair | null }
);

/** A finished request as the metrics count it: app, route path, status, seconds, and its affinity outcome (null: none). */
export type RequestRecord = [app: string, route: string, status: number, seconds: number, affinity: AffinityOutcome | null];
/** An admission decision: app, process, outcome, wait in ms. */
export type AdmissionRecord = [app: string, process: string, outcome: 'admitted' | AdmissionRejection, waitMs: number];

export type ToWorker =
  | { type: 'close-upgrades'; generation: string }
  | { type: 'stop'; deadlineMs: number }
  | { type: 'metrics-text'; id: number; text: string | null; contentType: string }
  /** The main thread's answer to an `on-demand` question (the certificate, if any, came by the state port first). */
  | { type: 'on-demand-done'; id: number; ok: boolean };

export type FromWorker =
  | { type: 'ready' }
  /** Its last request or WebSocket on a watched instance (a drain waits for it) ended. */
  | { type: 'idle'; slot: number }
  | { type: 'stats'; requests: RequestRecord[]; admissions: AdmissionRecord[] }
  /** Log lines (JSON, newline-terminated), written by the main thread's destination. */
  | { type: 'log'; text: string }
  /** `metrics_public`: a client asked the front door for /metrics. */
  | { type: 'metrics'; id: number }
  /** A handshake for a name that may be ordered on demand (the main thread's ACME manager decides and orders). */
  | { type: 'on-demand'; id: number; name: string }
  | { type: 'stopped' };
