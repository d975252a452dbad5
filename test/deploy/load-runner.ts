/**
 * Light continuous load for deploy tests: a few clients in a loop against the front door, half on
 * keep-alive connections and half on fresh ones, alternating `GET /` (whose JSON body names the release
 * that served it) and `POST /echo` (whose body must come back unchanged). Every answer that is not a
 * 200 with the right body is a failure, kept with its reason so a failing test shows what went wrong.
 */
import { Agent, request } from 'node:http';

export interface LoadOptions {
  port: number;
  /** Host header, to pick an app when several share the front door. */
  host?: string;
  /** Concurrent clients (default 4). */
  clients?: number;
  /** Per-request client timeout (default 30s). */
  timeoutMs?: number;
}

export interface LoadStats {
  ok: number;
  failures: string[];
  /** Release id -> responses it served. */
  releases: Map<string, number>;
}

interface Answer {
  status: number;
  body: string;
}

export class LoadRunner {
  readonly port: number;
  readonly host: string | undefined;
  ok = 0;
  readonly failures: string[] = [];
  readonly releases = new Map<string, number>();
  /** The release of the last `GET /` answered. */
  lastRelease: string | null = null;
  #clients: Promise<void>[] = [];
  #running = false;
  #agent = new Agent({ keepAlive: true, maxSockets: 64 });
  #timeoutMs: number;
  #seq = 0;

  constructor(opts: LoadOptions) {
    this.port = opts.port;
    this.host = opts.host;
    this.#timeoutMs = opts.timeoutMs ?? 30_000;
    this.#running = true;
    const n = opts.clients ?? 4;
    for (let i = 0; i < n; i++) this.#clients.push(this.#client(i % 2 === 0));
  }

  /** Starts `clients` loops at once; stop() ends them. */
  static start(opts: LoadOptions): LoadRunner {
    return new LoadRunner(opts);
  }

  /** Resolves after `n` more successful requests (or throws after `timeoutMs`). */
  async more(n: number, timeoutMs = 15_000): Promise<void> {
    const target = this.ok + n;
    const deadline = Date.now() + timeoutMs;
    while (this.ok < target) {
      if (Date.now() > deadline) throw new Error(`load stalled: ${this.ok}/${target} ok, failures: ${this.failures.slice(0, 5).join('; ')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Ends every client loop once its request in hand is answered. */
  async stop(): Promise<LoadStats> {
    this.#running = false;
    await Promise.all(this.#clients);
    this.#agent.destroy();
    return { ok: this.ok, failures: this.failures, releases: this.releases };
  }

  async #client(keepAlive: boolean): Promise<void> {
    while (this.#running) {
      const n = this.#seq++;
      const echo = n % 2 === 1;
      const payload = echo ? `payload-${n}-${'x'.repeat(n % 300)}` : null;
      try {
        const res = await this.#request(keepAlive, echo ? 'POST' : 'GET', echo ? '/echo' : '/', payload);
        if (res.status !== 200) this.failures.push(`${echo ? 'POST /echo' : 'GET /'}: status ${res.status}: ${res.body.slice(0, 200)}`);
        else if (echo && res.body !== payload) this.failures.push(`POST /echo: body mismatch: ${res.body.slice(0, 100)}`);
        else {
          if (!echo) {
            const release = JSON.parse(res.body).release as string;
            this.lastRelease = release;
            this.releases.set(release, (this.releases.get(release) ?? 0) + 1);
          }
          this.ok++;
        }
      } catch (err) {
        this.failures.push(`${echo ? 'POST /echo' : 'GET /'}: ${(err as Error).message}`);
      }
    }
  }

  #request(keepAlive: boolean, method: string, path: string, body: string | null): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      if (this.host) headers.host = this.host;
      if (body !== null) {
        headers['content-type'] = 'text/plain';
        headers['content-length'] = String(Buffer.byteLength(body));
      }
      const req = request({ host: '127.0.0.1', port: this.port, method, path, headers, agent: keepAlive ? this.#agent : false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        res.on('error', reject);
      });
      req.setTimeout(this.#timeoutMs, () => req.destroy(new Error('client timeout')));
      req.on('error', reject);
      req.end(body ?? undefined);
    });
  }
}
