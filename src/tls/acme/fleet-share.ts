/**
 * What ACME needs of a fleet (fleet/acme-sharing.ts), so that one node orders a host's certificate and
 * every node serves it, and the CA's challenge reaches an answer whichever node it asks. Without it (one
 * gateway) the manager orders alone and answers from memory.
 */
export interface AcmeFleet {
  /** Takes the fleet-wide order lock of `host`: null when taken, else the node that holds it. Throws when the store cannot answer. */
  lock(host: string): Promise<string | null>;
  unlock(host: string): Promise<void>;
  /** Hands a challenge answer to every node (key: `http-01:<token>` or `tls-alpn-01:<host>`). */
  share(key: string, value: string): Promise<void>;
  unshare(key: string): Promise<void>;
  /** A shared answer, or null when it is gone. */
  read(key: string): Promise<string | null>;
  /** Every shared answer (a node that starts or reconnects may have missed their announcements). */
  readAll(): Promise<[key: string, value: string][]>;
}

/** How long an order waits after sharing a challenge answer, so every node has it when the CA asks. */
export const SHARE_SETTLE_MS = 1_000;
/** How soon a node looks again at a host another node is ordering. */
export const ORDER_ELSEWHERE_RECHECK_MS = 5_000;
