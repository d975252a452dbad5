/**
 * The contract between the supervisor (which owns processes) and the proxy (which sends them requests).
 * The proxy sees instances only through `Upstream` and generations only through `GenerationView`, and
 * never calls into the supervisor on the hot path: it reads fields and calls acquire(), begin() and end().
 */

/** starting: spawned, not yet ready. ready: takes requests. unhealthy: failed its probes, gets no new
 * requests, is being replaced. backoff: exited, waiting to restart. crashed: gave up restarting.
 * stopping/stopped: being stopped on purpose. */
export type InstanceState = 'starting' | 'ready' | 'unhealthy' | 'backoff' | 'crashed' | 'stopping' | 'stopped';

export type UpstreamAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/** One instance as the proxy sees it. */
export interface Upstream {
  readonly app: string;
  readonly process: string;
  /** 0-based instance index within its process type. */
  readonly index: number;
  readonly releaseId: string;
  readonly state: InstanceState;
  /** Where it listens now; null while it has no live process. Changes when it restarts. */
  readonly address: UpstreamAddress | null;
  /** Requests currently being served by it (WebSockets are counted in `tunnels`, not here). */
  readonly inFlight: number;
  /**
   * WebSockets open to it. They hold no request slot (`pick()` ignores them), but a drain waits for
   * them: the generation's `inFlight` includes them.
   */
  readonly tunnels: number;
  /** Most requests it may hold at once. */
  readonly concurrency: number;
  /** Total requests it has finished. */
  readonly served: number;
  /**
   * Takes one request slot if fewer than `concurrency` requests are in flight, atomically across the
   * proxy's threads; the caller then calls `begin(true)`. False: full.
   */
  tryReserve(): boolean;
  /**
   * Marks a request as started on this instance; returns a ticket to pass to end(). `reserved`: its slot
   * was taken by tryReserve() (else begin takes one whatever the count).
   */
  begin(reserved?: boolean): number;
  /** Marks the request with this ticket as finished. */
  end(ticket: number): void;
  /** A WebSocket to it has been opened (its upgrade request is about to be sent). */
  beginTunnel(): void;
  /** That WebSocket is closed; called once per beginTunnel(). */
  endTunnel(): void;
  /**
   * A request of a route with cookie affinity has just been served by it (proxy/affinity.ts): its
   * client may come back for it, so a drain of its generation gives such clients a moment longer.
   */
  markAffine(): void;
  /** Epoch ms of the last markAffine() by any proxy thread, to 0.1 s; 0: never. */
  readonly lastAffineAt: number;
}

export type GenerationState = 'starting' | 'ready' | 'failed' | 'draining' | 'stopping' | 'stopped';

/** A generation as the proxy sees it: the pools of one app's release, started by one deploy or reload. */
export interface GenerationView {
  /** Unique within the gateway's lifetime, e.g. "shop#3". */
  readonly id: string;
  readonly app: string;
  readonly releaseId: string;
  /** The release's resolved real path (never the `current` symlink). */
  readonly releaseDir: string;
  readonly state: GenerationState;
  /** http process type name -> pool. */
  readonly pools: ReadonlyMap<string, PoolView>;
  /** Requests and WebSockets in flight across all of this generation's instances (what a drain waits for). */
  readonly inFlight: number;
}

export interface PoolView {
  readonly process: string;
  readonly concurrency: number;
  /** The pool's instances now; the supervisor replaces this array (copy on write) when it swaps one. */
  readonly instances: readonly Upstream[];
  /** The least-busy ready instance with a free slot, skipping `exclude`; null when none. */
  pick(exclude?: Upstream): Upstream | null;
  /**
   * As pick(), and takes one of that instance's request slots (tryReserve), trying the next best when
   * another thread took the last one first; the caller then calls `begin(true)` on it. Null when none.
   */
  acquire(exclude?: Upstream): Upstream | null;
  /**
   * Whether any instance is `ready` or `starting`: false when every one is in backoff, crashed or
   * stopping, so a request would only wait out the queue timeout.
   */
  serviceable(): boolean;
  /**
   * For a WebSocket: the ready instance with the fewest tunnels, skipping `exclude`, whether or not its
   * request slots are full (a tunnel takes none); null when no instance is ready.
   */
  pickTunnel(exclude?: Upstream): Upstream | null;
}

// ---- what the supervisor says of its instances (status, history, an upgrade's handover) -------------

/** One instance as `berth status` shows it. */
export interface InstanceSnapshot {
  process: string;
  index: number;
  http: boolean;
  pid: number | null;
  state: InstanceState;
  /** "127.0.0.1:41234" or "unix:/path"; null while no process runs. */
  address: string | null;
  inFlight: number;
  served: number;
  /** In flight, with no request older than busy_grace: slow, not dead (SPEC § Health). */
  busy: boolean;
  /** VmRSS summed over every process of the instance's process group (Linux); null when unknown. */
  rssBytes: number | null;
  uptimeMs: number | null;
  restarts: number;
  lastExit: { code: number | null; signal: string | null; at: string } | null;
  /** Why the process last ended without being asked to: it exited, went silent, or never got ready. */
  lastRestartReason: RestartReason | null;
}

/** exit: the process ended by itself. heartbeat: it stopped touching its heartbeat file and was killed.
 * startup-timeout: it never answered within startup_timeout and was killed. */
export type RestartReason = 'exit' | 'heartbeat' | 'startup-timeout';

/** An instance's process ended without a stop() and is restarted after `delayMs` (null: crashed, not restarted). */
export interface RestartInfo {
  app: string;
  process: string;
  index: number;
  releaseId: string;
  reason: RestartReason;
  /** For people: "heartbeat: silent for 12s", "exited with code 1"... */
  detail: string;
  delayMs: number | null;
}

export type RestartHook = (info: RestartInfo) => void;

/**
 * A running instance as an upgrade hands it to the next gateway (upgrade/handover.ts): enough to adopt
 * its process where it is, with its address and counters. Plain data: it crosses the upgrade channel.
 */
export interface InstanceHandover {
  process: string;
  index: number;
  pid: number;
  state: InstanceState;
  address: UpstreamAddress | null;
  /** The socket path the app bound, when `address` is its pinned link (Ports.pin). */
  bound: string | null;
  startedAt: number;
  restarts: number;
  lastExit: InstanceSnapshot['lastExit'];
  lastRestartReason: RestartReason | null;
}
