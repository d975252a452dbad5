/**
 * The gateway's Prometheus metrics.
 *
 * Nothing on the request path calls in here. The proxy and the supervisor publish events on
 * `diagnostics_channel`s (one place per event, behind `hasSubscribers`), and this class subscribes
 * while it runs. Levels (in flight, queue depth, instance states) are not events at all: they are read
 * from live state when a scrape asks, so they cost nothing between scrapes.
 *
 * The channels are process-wide: run one gateway per process (as `berth start` does) for its counters
 * to be its own.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { Counter, Gauge, Registry, type Histogram } from 'prom-client';
import { requestChannel, type CompletedRequest } from '../proxy/access-log.ts';
import { admissionChannel, type AdmissionEvent } from '../proxy/admission.ts';
import { AFFINITY_OUTCOMES, type AffinityOutcome } from '../proxy/affinity.ts';
import type { AdmissionRecord, RequestRecord } from '../proxy/worker-protocol.ts';
import { HANDSHAKE_FAILURE_REASONS, handshakeFailureChannel, type HandshakeFailureReason } from '../tls/handshake-failure.ts';
import { probeChannel, type ProbeEvent } from '../supervisor/health.ts';
import { instanceChannel, type InstanceEvent } from '../supervisor/instance.ts';
import type { InstanceState } from '../supervisor/types.ts';
import type { Logger } from '../lib/logger.ts';

/** Seconds. Covers a fast proxied request (1ms) up to a slow one held until a 30s headers timeout. */
export const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Every instance state, so each pool reports all of them (0 included) and no series ever vanishes. */
const INSTANCE_STATES: readonly InstanceState[] = ['starting', 'ready', 'unhealthy', 'backoff', 'crashed', 'stopping', 'stopped'];

/** `status_class` by `status / 100`; anything outside 1..5 is `other`. */
const STATUS_CLASSES = ['other', '1xx', '2xx', '3xx', '4xx', '5xx'];

/** One admission pool (`app/process`) as the scrape reads it. The proxy's Admission has this shape. */
export interface PoolLevels {
  readonly app: string;
  readonly process: string;
  /** Requests admitted and not finished, across generations. */
  readonly active: number;
  /** Requests waiting in the queue. */
  readonly depth: number;
  /** Most requests in flight at once (instances x concurrency). */
  readonly limit: number;
}

/** One instance as the scrape reads it. The supervisor's Instance has this shape. */
export interface InstanceLevels {
  readonly app: string;
  readonly process: string;
  readonly state: InstanceState;
}

/** Where the scrape-time gauges come from (the gateway wires the proxy and the supervisor in). */
export interface MetricsSource {
  pools(): Iterable<PoolLevels>;
  instances(): Iterable<InstanceLevels>;
  /** Each served certificate's expiry (Unix seconds), by host; none without a TLS listener. */
  certificates?(): Iterable<{ host: string; seconds: number }>;
}

/** What an HTTP surface needs to serve the metrics. */
export interface MetricsExporter {
  readonly contentType: string;
  /** The Prometheus text exposition of every metric. */
  text(): Promise<string>;
}

export type MetricsState = 'new' | 'running' | 'stopped';

/**
 * One labelled series of a `FastHistogram`: a bucket search and three adds on plain numbers per
 * observation. prom-client's own observe() validates and hashes the labels on every call (about 1.5µs
 * measured, against about 10ns here), which the per-request path should not pay.
 */
export class HistogramSeries {
  readonly labels: Readonly<Record<string, string>>;
  /** Per bucket (not cumulative); the last slot is above the highest bound. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  #bounds: readonly number[];

  constructor(labels: Record<string, string>, bounds: readonly number[]) {
    this.labels = labels;
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]) i++;
    this.counts[i]++;
    this.sum += value;
    this.count++;
  }
}

interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName: string;
}

/**
 * A histogram the registry reads at scrape time like one of its own (`registerMetric` takes anything
 * with `name` and `get()`), fed through `HistogramSeries` objects resolved once per label set.
 */
export class FastHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly bounds: readonly number[];
  #series = new Map<string, HistogramSeries>();

  constructor(name: string, help: string, bounds: readonly number[]) {
    this.name = name;
    this.help = help;
    this.bounds = bounds;
  }

  /** The series of these labels (always the same keys, in the same order), made on first use. */
  series(labels: Record<string, string>): HistogramSeries {
    const key = Object.values(labels).join('\u0000');
    let s = this.#series.get(key);
    if (s === undefined) {
      s = new HistogramSeries(labels, this.bounds);
      this.#series.set(key, s);
    }
    return s;
  }

  /** The exposition values, in the shape prom-client's registry formats: cumulative buckets, sum, count. */
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: MetricValue[] }> {
    const values: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.#series.values()) {
      let acc = 0;
      // `le` first, as prom-client's own histograms write it.
      for (let i = 0; i < this.bounds.length; i++) {
        acc += s.counts[i];
        values.push({ value: acc, labels: { le: this.bounds[i], ...s.labels }, metricName: bucket });
      }
      values.push({ value: s.count, labels: { le: '+Inf', ...s.labels }, metricName: bucket });
      values.push({ value: s.sum, labels: { ...s.labels }, metricName: `${this.name}_sum` });
      values.push({ value: s.count, labels: { ...s.labels }, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

/** The per-request series of one app and route, resolved once per route object. */
interface RouteSeries {
  readonly app: string;
  readonly path: string;
  /** Requests by STATUS_CLASSES index. */
  readonly classes: Float64Array;
  readonly duration: HistogramSeries;
  /** Requests of a route with affinity, by AFFINITY_OUTCOMES index. */
  readonly affinity: Float64Array;
}

/** The series of one pool, resolved once per Admission. */
interface PoolSeries {
  readonly wait: HistogramSeries;
  readonly full: { inc(): void };
  readonly timeout: { inc(): void };
  readonly unavailable: { inc(): void };
}

export class Metrics implements MetricsExporter {
  readonly registry = new Registry();
  #state: MetricsState = 'new';
  #source: MetricsSource;
  #log: Logger;

  #duration = new FastHistogram(
    'berth_request_duration_seconds',
    'Time from arrival to the end of the response of proxied requests, queue wait included.',
    LATENCY_BUCKETS,
  );
  #queueWait = new FastHistogram(
    'berth_queue_wait_seconds',
    'Time requests spent in the admission queue before being admitted or timed out (0: admitted on arrival).',
    LATENCY_BUCKETS,
  );
  #rejections: Counter<'app' | 'process' | 'reason'>;
  #probes: Counter<'app' | 'process' | 'result'>;
  #restarts: Counter<'app' | 'process'>;
  #unhealthy: Counter<'app' | 'process'>;
  #handshakeFailures: Counter<'reason'>;
  #flushedUrls: Counter<'app' | 'outcome'>;

  /** `app NUL path` -> series: two route objects with the same labels share one series. */
  #routeSeries = new Map<string, RouteSeries>();
  /** Keyed by the config's route object: a config reload brings new keys and the old ones are collected. */
  #byRoute = new WeakMap<object, RouteSeries>();
  /** Route and pool keys of worker threads' records, one object each (see #intern). */
  #remoteRoutes = new Map<string, { path: string }>();
  #remotePools = new Map<string, { app: string; process: string }>();
  /** Keyed by the proxy's Admission, which lives as long as its pool. */
  #byPool = new WeakMap<object, PoolSeries>();

  constructor(source: MetricsSource, logger: Logger) {
    this.#source = source;
    this.#log = logger;
    const registers = [this.registry];
    const routeSeries = this.#routeSeries;
    new Counter({
      name: 'berth_requests_total',
      help: 'Proxied requests by app, route (path prefix) and status class (499, the client went away, is 4xx).',
      labelNames: ['app', 'route', 'status_class'],
      registers,
      // Counted in plain arrays on the request path; handed to prom-client only when scraped.
      collect() {
        this.reset();
        for (const s of routeSeries.values()) {
          for (let i = 0; i < STATUS_CLASSES.length; i++) {
            if (s.classes[i] > 0) this.inc({ app: s.app, route: s.path, status_class: STATUS_CLASSES[i] }, s.classes[i]);
          }
        }
      },
    });
    new Counter({
      name: 'berth_affinity_requests_total',
      help: 'Proxied requests of routes with affinity, by outcome: hit (went to the instance its affinity names), miss (none berth could follow: placed by load), repin (its instance was not ready: another one, a new session).',
      labelNames: ['app', 'route', 'outcome'],
      registers,
      collect() {
        this.reset();
        for (const s of routeSeries.values()) {
          for (let i = 0; i < AFFINITY_OUTCOMES.length; i++) {
            if (s.affinity[i] > 0) this.inc({ app: s.app, route: s.path, outcome: AFFINITY_OUTCOMES[i] }, s.affinity[i]);
          }
        }
      },
    });
    // The registry takes any metric with a name and get(); its types only know its own classes.
    this.registry.registerMetric(this.#duration as unknown as Histogram);
    this.registry.registerMetric(this.#queueWait as unknown as Histogram);
    this.#rejections = new Counter({
      name: 'berth_admission_rejections_total',
      help: 'Requests turned away by admission with 503, by reason (queue-full, queue-timeout, no-healthy-instance).',
      labelNames: ['app', 'process', 'reason'],
      registers,
    });
    this.#probes = new Counter({
      name: 'berth_health_probes_total',
      help: 'Health probes of ready instances by result: ok, failed (counted), busy (failed while busy: not counted).',
      labelNames: ['app', 'process', 'result'],
      registers,
    });
    this.#restarts = new Counter({
      name: 'berth_instance_restarts_total',
      help: 'Instance restarts after their process exited (crash, kill, missed heartbeat).',
      labelNames: ['app', 'process'],
      registers,
    });
    this.#unhealthy = new Counter({
      name: 'berth_instance_unhealthy_total',
      help: 'Instances marked unhealthy by their health probes (each is then replaced).',
      labelNames: ['app', 'process'],
      registers,
    });
    this.#handshakeFailures = new Counter({
      name: 'berth_tls_handshake_failures_total',
      help: 'TLS handshakes that failed on the front door, by reason (protocol-version, unknown-name, no-application-protocol, no-shared-cipher, timeout, reset, other).',
      labelNames: ['reason'],
      registers,
    });
    for (const reason of HANDSHAKE_FAILURE_REASONS) this.#handshakeFailures.labels(reason).inc(0);
    this.#flushedUrls = new Counter({
      name: 'berth_cache_flush_urls_total',
      help: 'URLs (or ARLs) sent to the CDN by cache flushes, by app and outcome (purged, failed: given up on).',
      labelNames: ['app', 'outcome'],
      registers,
    });
    const pools = () => this.#source.pools();
    // One gauge per pool figure: [name, help, the figure].
    const poolGauges: [string, string, (p: PoolLevels) => number][] = [
      ['berth_pool_in_flight', 'Requests admitted and not yet finished, per pool, across generations.', (p) => p.active],
      ['berth_pool_queue_depth', 'Requests waiting in the admission queue, per pool.', (p) => p.depth],
      ['berth_pool_limit', 'Most requests in flight at once per pool: instances x concurrency.', (p) => p.limit],
    ];
    for (const [name, help, figure] of poolGauges) {
      new Gauge({
        name,
        help,
        labelNames: ['app', 'process'],
        registers,
        collect() {
          this.reset();
          for (const p of pools()) this.set({ app: p.app, process: p.process }, figure(p));
        },
      });
    }
    const instances = () => this.#source.instances();
    new Gauge({
      name: 'berth_instances',
      help: 'Instances of live generations by state (every state listed, 0 included).',
      labelNames: ['app', 'process', 'state'],
      registers,
      collect() {
        this.reset();
        const counts = new Map<string, { app: string; process: string; byState: Map<InstanceState, number> }>();
        for (const inst of instances()) {
          const key = `${inst.app}\u0000${inst.process}`;
          let entry = counts.get(key);
          if (entry === undefined) {
            entry = { app: inst.app, process: inst.process, byState: new Map(INSTANCE_STATES.map((s) => [s, 0])) };
            counts.set(key, entry);
          }
          entry.byState.set(inst.state, (entry.byState.get(inst.state) ?? 0) + 1);
        }
        for (const { app, process, byState } of counts.values()) {
          for (const [state, n] of byState) this.set({ app, process, state }, n);
        }
      },
    });
    const certificates = () => this.#source.certificates?.() ?? [];
    new Gauge({
      name: 'berth_certificate_expiry_timestamp_seconds',
      help: 'When the certificate served for a host expires (Unix seconds): alert well before it.',
      labelNames: ['host'],
      registers,
      collect() {
        this.reset();
        for (const c of certificates()) this.set({ host: c.host }, c.seconds);
      },
    });
  }

  get state(): MetricsState {
    return this.#state;
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Subscribes to the proxy's and the supervisor's channels. */
  start(): void {
    if (this.#state === 'running') return;
    subscribe(requestChannel.name, this.#onRequest);
    subscribe(admissionChannel.name, this.#onAdmission);
    subscribe(probeChannel.name, this.#onProbe);
    subscribe(instanceChannel.name, this.#onInstance);
    subscribe(handshakeFailureChannel.name, this.#onHandshakeFailure);
    this.#transition('running');
  }

  /**
   * Unsubscribes, so the counters stop moving and the publishers go back to paying nothing. There is
   * nothing to drain, so there is no deadline to give. The values stay readable.
   */
  stop(): void {
    if (this.#state !== 'running') {
      if (this.#state === 'new') this.#transition('stopped');
      return;
    }
    unsubscribe(requestChannel.name, this.#onRequest);
    unsubscribe(admissionChannel.name, this.#onAdmission);
    unsubscribe(probeChannel.name, this.#onProbe);
    unsubscribe(instanceChannel.name, this.#onInstance);
    unsubscribe(handshakeFailureChannel.name, this.#onHandshakeFailure);
    this.#transition('stopped');
  }

  /** The same as stop(): the subscriptions are all this holds. */
  destroy(_err?: Error): void {
    this.stop();
  }

  /** The Prometheus text exposition, levels read now. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  #transition(next: MetricsState): void {
    const was = this.#state;
    this.#state = next;
    this.#log.debug({ state: next, was }, 'metrics state');
  }

  // Arrow properties: unsubscribing needs the very function that subscribed, and they are made once.
  #onRequest = (message: unknown): void => {
    const req = message as CompletedRequest;
    this.#request(this.#route(req.app.name, req.route), req.status, (performance.now() - req.start) / 1000, req.affinity ?? null);
  };

  #onAdmission = (message: unknown): void => {
    const e = message as AdmissionEvent;
    this.#admission(this.#pool(e.admission), e.outcome, e.waitMs);
  };

  /**
   * What a proxy worker thread saw (proxy-workers.ts relays it every few hundred ms): its requests and
   * admission decisions, counted as if this thread had seen them.
   */
  /** A cache flush purged (or gave up on) `count` URLs of the app (flush/flusher.ts). */
  cacheFlushed(app: string, outcome: 'purged' | 'failed', count: number): void {
    this.#flushedUrls.labels(app, outcome).inc(count);
  }

  recordRemote(requests: readonly RequestRecord[], admissions: readonly AdmissionRecord[]): void {
    for (const [app, path, status, seconds, affinity] of requests) {
      this.#request(this.#route(app, this.#intern(this.#remoteRoutes, `${app}\u0000${path}`, () => ({ path }))), status, seconds, affinity ?? null);
    }
    for (const [app, process, outcome, waitMs] of admissions) {
      this.#admission(this.#pool(this.#intern(this.#remotePools, `${app}/${process}`, () => ({ app, process }))), outcome, waitMs);
    }
  }

  #request(series: RouteSeries, status: number, seconds: number, affinity: AffinityOutcome | null): void {
    const cls = (status / 100) | 0;
    series.classes[cls >= 1 && cls <= 5 ? cls : 0]++;
    series.duration.observe(seconds);
    if (affinity !== null) series.affinity[affinity === 'hit' ? 0 : affinity === 'miss' ? 1 : 2]++;
  }

  #admission(series: PoolSeries, outcome: AdmissionEvent['outcome'], waitMs: number): void {
    // A full queue turns a request away on arrival: it never waited.
    if (outcome === 'queue-full') series.full.inc();
    else if (outcome === 'no-healthy-instance') series.unavailable.inc();
    else {
      series.wait.observe(waitMs / 1000);
      if (outcome === 'queue-timeout') series.timeout.inc();
    }
  }

  /** One object per key, so the series caches keyed by object find it again. */
  #intern<T>(map: Map<string, T>, key: string, make: () => T): T {
    let v = map.get(key);
    if (v === undefined) {
      v = make();
      map.set(key, v);
    }
    return v;
  }

  #onProbe = (message: unknown): void => {
    const e = message as ProbeEvent;
    this.#probes.inc({ app: e.target.app ?? '', process: e.target.process ?? '', result: e.result });
  };

  #onHandshakeFailure = (message: unknown): void => {
    this.#handshakeFailures.labels((message as { reason: HandshakeFailureReason }).reason).inc();
  };

  #onInstance = (message: unknown): void => {
    const e = message as InstanceEvent;
    const labels = { app: e.instance.app, process: e.instance.process };
    if (e.event === 'restart') this.#restarts.inc(labels);
    else this.#unhealthy.inc(labels);
  };

  #route(app: string, route: { readonly path: string }): RouteSeries {
    const known = this.#byRoute.get(route);
    if (known !== undefined && known.app === app) return known;
    const key = `${app}\u0000${route.path}`;
    let series = this.#routeSeries.get(key);
    if (series === undefined) {
      series = {
        app,
        path: route.path,
        classes: new Float64Array(STATUS_CLASSES.length),
        duration: this.#duration.series({ app, route: route.path }),
        affinity: new Float64Array(AFFINITY_OUTCOMES.length),
      };
      this.#routeSeries.set(key, series);
    }
    this.#byRoute.set(route, series);
    return series;
  }

  #pool(admission: { readonly app: string; readonly process: string }): PoolSeries {
    let series = this.#byPool.get(admission);
    if (series === undefined) {
      const { app, process } = admission;
      series = {
        wait: this.#queueWait.series({ app, process }),
        full: this.#rejections.labels(app, process, 'queue-full'),
        timeout: this.#rejections.labels(app, process, 'queue-timeout'),
        unavailable: this.#rejections.labels(app, process, 'no-healthy-instance'),
      };
      this.#byPool.set(admission, series);
    }
    return series;
  }
}
