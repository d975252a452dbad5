/**
 * A proxy worker thread (`proxy.workers`, started by proxy-workers.ts): the same Proxy as the main
 * thread's, on the same TCP listeners (SO_REUSEPORT), over a mirror of the main thread's routing table
 * (mirror.ts) and the gateway's shared counts; for TLS, a certificate store of its own over the same
 * files plus what the main thread's ACME manager serves. Its logs, metrics, drain notices and on-demand
 * questions go to the main thread as messages (worker-protocol.ts).
 */
import { subscribe } from 'node:diagnostics_channel';
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import type { DestinationStream } from 'pino';
import { LoggerFactory } from '../lib/logger.ts';
import { G_STATE_VERSION, SharedCells } from '../lib/shared-cells.ts';
import type { MetricsExporter } from '../metrics/metrics.ts';
import { requestChannel, type CompletedRequest } from './access-log.ts';
import { admissionChannel, type AdmissionEvent } from './admission.ts';
import { Mirror, learnTables } from './mirror.ts';
import { Proxy } from './server.ts';
import { certificateInput } from '../tls/certificate-input.ts';
import { CertificateStore } from '../tls/certificate-store.ts';
import { TicketKeys } from '../tls/ticket-keys.ts';
import { Certificate } from '../tls/certificate.ts';
import type { FrontDoorAcme } from '../tls/front-door.ts';
import { challengeToken } from '../tls/acme/challenge-path.ts';
import { tlsContextOptions } from '../tls/server-options.ts';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { AdmissionRecord, FromWorker, RequestRecord, StateMessage, ToWorker, WorkerData } from './worker-protocol.ts';
import type { PemPair } from '../tls/types.ts';

/** A thread with no requests still reads new tables this often (its health lane and drains use them). */
const STATE_POLL_MS = 50;
/** Metrics records are sent at most this often (and at the end). */
const STATS_MS = 250;
/** Log lines are sent this often, or sooner once this many bytes wait. */
const LOG_FLUSH_MS = 20;
const LOG_FLUSH_BYTES = 64 * 1024;

const port = parentPort!;
const data = workerData as WorkerData;
const post = (msg: FromWorker): void => port.postMessage(msg);

/** Log lines go to the main thread, which writes them with its own: one writer, no torn lines. */
class PostedLines implements DestinationStream {
  #buffer = '';
  #timer: NodeJS.Timeout | null = null;

  write(line: string): void {
    this.#buffer += line;
    if (this.#buffer.length >= LOG_FLUSH_BYTES) this.flush();
    else this.#timer ??= setTimeout(() => this.flush(), LOG_FLUSH_MS);
  }

  flush(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#buffer === '') return;
    post({ type: 'log', text: this.#buffer });
    this.#buffer = '';
  }
}

/** `metrics_public`: the main thread renders the metrics (it holds them all). */
class RemoteMetrics implements MetricsExporter {
  contentType = 'text/plain; version=0.0.4; charset=utf-8';
  #next = 0;
  #waiting = new Map<number, (text: string | null) => void>();

  text(): Promise<string> {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, (text) => (text === null ? reject(new Error('metrics unavailable')) : resolve(text)));
      post({ type: 'metrics', id });
    });
  }

  answer(id: number, text: string | null, contentType: string): void {
    this.contentType = contentType;
    const done = this.#waiting.get(id);
    this.#waiting.delete(id);
    done?.(text);
  }
}

/** What this thread's requests and admissions were, for the main thread's metrics. */
class Stats {
  #requests: RequestRecord[] = [];
  #admissions: AdmissionRecord[] = [];
  #timer: NodeJS.Timeout;

  constructor() {
    subscribe(requestChannel.name, (message) => {
      const r = message as CompletedRequest;
      this.#requests.push([r.app.name, r.route.path, r.status, (performance.now() - r.start) / 1000, r.affinity ?? null]);
    });
    subscribe(admissionChannel.name, (message) => {
      const e = message as AdmissionEvent;
      this.#admissions.push([e.admission.app, e.admission.process, e.outcome, e.waitMs]);
    });
    this.#timer = setInterval(() => this.flush(), STATS_MS);
    this.#timer.unref();
  }

  flush(): void {
    if (this.#requests.length === 0 && this.#admissions.length === 0) return;
    post({ type: 'stats', requests: this.#requests, admissions: this.#admissions });
    this.#requests = [];
    this.#admissions = [];
  }

  stop(): void {
    clearInterval(this.#timer);
    this.flush();
  }
}

const cells = new SharedCells(data.cells);
cells.thread = data.thread;
cells.threads = data.threads;
const lines = new PostedLines();
// Its lines say which thread wrote them; a config reload's log levels apply to them too.
const logs = new LoggerFactory(data.config.logLevels, lines, { thread: data.thread });
const log = logs.get('proxy');
const metrics = new RemoteMetrics();
const stats = new Stats();
const mirror = new Mirror(cells, (slot) => post({ type: 'idle', slot }));
let applied = data.version;

/** Applies what the main thread posted since the last time, if the version cell says there is any. */
function catchUp(): void {
  if (Atomics.load(cells.i32, G_STATE_VERSION) === applied) return;
  for (let m = receiveMessageOnPort(data.state); m !== undefined; m = receiveMessageOnPort(data.state)) {
    const msg = m.message as StateMessage;
    if (msg.type === 'table') proxy.setTable(mirror.table(msg.table));
    else if (msg.type === 'challenges') acme.setTokens(msg.tokens);
    else if (msg.type === 'ticket-key') ticketKeys?.rotate(Buffer.from(msg.key));
    else if (msg.type === 'managed') serveManaged(msg.host, msg.pem);
    else if (msg.type === 'alpn') acme.setAlpn(msg.host, msg.pem);
    else {
      learnTables(cells, msg.tables);
      proxy.setConfig({ ...msg.config, listen: data.listen });
      logs.setLevels(msg.config.logLevels);
      if (certificates !== null) void rereadCertificates(certificates, msg.config);
    }
    applied = msg.version;
  }
}

/**
 * ACME as this thread sees it: HTTP-01 answers and TLS-ALPN-01 certificates copied from the main thread,
 * and on-demand names decided there (the certificate, when one is issued, comes by the state port).
 */
class WorkerAcme implements FrontDoorAcme {
  #tokens = new Map<string, string>();
  #alpn = new Map<string, SecureContext>();
  #next = 0;
  #waiting = new Map<number, (ok: boolean) => void>();

  setTokens(tokens: readonly [string, string][]): void {
    this.#tokens = new Map(tokens);
  }

  answerHttp(path: string): string | null {
    const token = challengeToken(path);
    return token === null ? null : (this.#tokens.get(token) ?? null);
  }

  setAlpn(host: string, pem: PemPair | null): void {
    if (pem === null) this.#alpn.delete(host);
    else this.#alpn.set(host, createSecureContext({ ...tlsContextOptions(), cert: pem.certificate, key: pem.key }));
  }

  alpnChallengeContext(servername: string): SecureContext | null {
    return this.#alpn.get(servername.toLowerCase().replace(/\.$/, '')) ?? null;
  }

  onDemand(servername: string): Promise<boolean> {
    const id = ++this.#next;
    return new Promise((resolve) => {
      this.#waiting.set(id, resolve);
      post({ type: 'on-demand', id, name: servername });
    });
  }

  answered(id: number, ok: boolean): void {
    const done = this.#waiting.get(id);
    this.#waiting.delete(id);
    // What the main thread sent before its answer (the new certificate) is applied first.
    catchUp();
    done?.(ok);
  }
}

const acme = new WorkerAcme();
acme.setTokens(data.challenges);
for (const [host, pem] of data.alpn) acme.setAlpn(host, pem);

// Shared TLS listeners: this thread's own certificate store over the same files, the ACME certificates
// the main thread serves, and the main thread's ticket keys (it rotates them and sends each new one).
let ticketKeys: TicketKeys | null = null;
let certificates: CertificateStore | null = null;
if (data.ticketKey !== null) {
  ticketKeys = new TicketKeys();
  ticketKeys.rotate(Buffer.from(data.ticketKey));
  certificates = new CertificateStore(certificateInput(data.config), { logger: logs.get('tls'), ticketKeys });
  await certificates.start();
  for (const [host, pem] of data.managed) serveManaged(host, pem);
}

/** An ACME certificate the main thread serves for `host` (null: not any more), served here too. */
function serveManaged(host: string, pem: PemPair | null): void {
  if (certificates === null) return;
  if (pem === null) {
    certificates.setManaged(host, null);
    return;
  }
  try {
    certificates.setManaged(host, Certificate.fromPem(`acme:${host}`, Buffer.from(pem.certificate), Buffer.from(pem.key)));
  } catch (err) {
    log.error({ host, err: (err as Error).message }, 'proxy worker: ACME certificate not usable');
  }
}

/** A config reload (or SIGHUP): the files as the new config names them, then every file read again, as the main thread does. */
async function rereadCertificates(store: CertificateStore, config: WorkerData['config']): Promise<void> {
  try {
    await store.configure(certificateInput(config));
    await store.reload();
  } catch (err) {
    // The main thread checked the same files first; one that changed in between keeps its old certificate here.
    log.warn({ err: (err as Error).message }, 'proxy worker: certificates not reconfigured');
  }
}

const proxy = new Proxy({ config: { ...data.config, listen: data.listen }, logger: log, cells, reusePort: true, catchUp });
proxy.setMetrics(metrics);
proxy.setTable(mirror.table(data.table));
setInterval(catchUp, STATE_POLL_MS).unref();

port.on('message', (msg: ToWorker) => {
  catchUp();
  switch (msg.type) {
    case 'close-upgrades': {
      const gen = mirror.generation(msg.generation);
      if (gen !== null) proxy.closeUpgrades(gen);
      break;
    }
    case 'metrics-text':
      metrics.answer(msg.id, msg.text, msg.contentType);
      break;
    case 'on-demand-done':
      acme.answered(msg.id, msg.ok);
      break;
    case 'stop':
      void proxy.stop(msg.deadlineMs).finally(async () => {
        await certificates?.stop();
        stats.stop();
        lines.flush();
        post({ type: 'stopped' });
        port.close();
      });
      break;
  }
});

try {
  await proxy.start(certificates === null ? null : { certificates, acme });
  log.info({ thread: data.thread, listen: data.listen.map((a) => a.text) }, 'proxy worker listening');
  post({ type: 'ready' });
} catch (err) {
  log.error({ thread: data.thread, err: (err as Error).message }, 'proxy worker could not listen');
  lines.flush();
  throw err;
}
