/**
 * Control-plane endpoints: who the caller is (`GET /v1/whoami`), a live feed for the dashboard
 * (`GET /v1/events`, server-sent events) and the config reload (`POST /v1/config/reload`).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BerthError, ConfigError, ErrorCodes } from '../lib/errors.ts';
import type { DeployEvent } from '../store/store.ts';
import type { Deploy } from '../deploy/deployer.ts';
import type { Control } from './control.ts';
import type { AppStatus } from './wire.ts';
import { hasRole, permits, topRole } from './auth.ts';
import type { RequestContext, RouteTable } from './request.ts';

/** A status snapshot goes to every dashboard this often. */
export const STATUS_INTERVAL_MS = 1_000;
/** How often running deploys are looked for, so their step events stream within this delay. */
const DEPLOY_POLL_MS = 200;
/** The request rate is averaged over this many status intervals. */
const RATE_WINDOW = 5;

/** An app's status as the dashboard gets it: with its recent request rate. */
export type LiveAppStatus = AppStatus & { requestRate: number };

interface Subscriber {
  res: ServerResponse;
  ctx: RequestContext;
}

interface Watched {
  deploy: Deploy;
  unsubscribe: () => void;
  ended: boolean;
}

type Snapshot = { status: ReturnType<Control['status']>; apps: LiveAppStatus[] };

/**
 * Fans gateway state out to the open event streams. Work is shared, not per stream: one status snapshot
 * per interval and one subscription per running deploy, whatever the number of dashboards. Timers run
 * only while someone listens.
 */
export class EventFeed {
  #gateway: Control;
  #subs = new Set<Subscriber>();
  #watched = new Map<string, Watched>();
  #statusTimer: NodeJS.Timeout | null = null;
  #deployTimer: NodeJS.Timeout | null = null;
  #latest: Snapshot | null = null;
  /** Instance key -> requests served at the last snapshot. */
  #served = new Map<string, number>();
  /** App -> requests per second in each of the last RATE_WINDOW intervals. */
  #window = new Map<string, number[]>();
  #lastTick = 0;

  constructor(gateway: Control) {
    this.#gateway = gateway;
  }

  get subscribers(): number {
    return this.#subs.size;
  }

  /** Streams events to `res` until the client goes away (or the gateway stops). */
  follow(req: IncomingMessage, res: ServerResponse, ctx: RequestContext): Promise<void> {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      // Proxies in front (nginx) must pass events on as they come.
      'x-accel-buffering': 'no',
    });
    res.write('retry: 2000\n\n');
    const sub: Subscriber = { res, ctx };
    this.#subs.add(sub);
    if (this.#subs.size === 1) this.#startTimers();
    this.#sendStatus(sub, this.#latest ?? (this.#latest = this.#snapshot()));
    // Deploys already running: their steps so far, so a dashboard opened mid-deploy sees the whole story.
    for (const { deploy, ended } of this.#watched.values()) {
      if (ended || !permits(ctx, deploy.app)) continue;
      for (const event of deploy.events) write(res, 'deploy', deployEvent(deploy, event));
    }
    this.#pollDeploys();
    return new Promise<void>((resolve) => {
      const done = () => {
        this.#remove(sub);
        resolve();
      };
      req.socket.once('close', done);
      res.once('close', done);
    });
  }

  /** Ends every stream (gateway stop): the server can then close without waiting for clients. */
  closeAll(): void {
    for (const sub of this.#subs) sub.res.end();
    this.#subs.clear();
    this.#stopTimers();
  }

  #remove(sub: Subscriber): void {
    if (!this.#subs.delete(sub)) return;
    if (this.#subs.size === 0) this.#stopTimers();
  }

  #startTimers(): void {
    this.#statusTimer = setInterval(() => this.#tick(), STATUS_INTERVAL_MS);
    this.#statusTimer.unref();
    this.#deployTimer = setInterval(() => this.#pollDeploys(), DEPLOY_POLL_MS);
    this.#deployTimer.unref();
  }

  #stopTimers(): void {
    if (this.#statusTimer) clearInterval(this.#statusTimer);
    if (this.#deployTimer) clearInterval(this.#deployTimer);
    this.#statusTimer = this.#deployTimer = null;
    for (const w of this.#watched.values()) w.unsubscribe();
    this.#watched.clear();
    this.#latest = null;
    this.#served.clear();
    this.#window.clear();
    this.#lastTick = 0;
  }

  #tick(): void {
    if (this.#gateway.state !== 'running') {
      this.closeAll();
      return;
    }
    const snapshot = (this.#latest = this.#snapshot());
    for (const sub of this.#subs) this.#sendStatus(sub, snapshot);
  }

  #sendStatus(sub: Subscriber, snapshot: Snapshot): void {
    const apps = sub.ctx.apps ? snapshot.apps.filter((a) => permits(sub.ctx, a.name)) : snapshot.apps;
    write(sub.res, 'status', { ...snapshot.status, apps });
  }

  /**
   * The gateway's status with each app's request rate: requests served per second over the last few
   * intervals, summed over every instance of every generation (an old one draining counts too).
   */
  #snapshot(): Snapshot {
    const status = this.#gateway.status();
    const now = Date.now();
    const seconds = this.#lastTick === 0 ? 0 : (now - this.#lastTick) / 1000;
    const seen = new Map<string, number>();
    const apps: LiveAppStatus[] = status.apps.map((app) => {
      let delta = 0;
      for (const gen of app.generations) {
        for (const inst of gen.instances) {
          const key = `${gen.id}/${inst.process}.${inst.index}/${inst.pid}`;
          seen.set(key, inst.served);
          delta += Math.max(0, inst.served - (this.#served.get(key) ?? 0));
        }
      }
      // The first snapshot has nothing to compare with: what was served before is not a rate.
      if (seconds <= 0) return { ...app, requestRate: 0 };
      const window = this.#window.get(app.name) ?? [];
      window.push(delta / seconds);
      if (window.length > RATE_WINDOW) window.shift();
      this.#window.set(app.name, window);
      const rate = window.reduce((a, b) => a + b, 0) / window.length;
      return { ...app, requestRate: Math.round(rate * 10) / 10 };
    });
    this.#served = seen;
    this.#lastTick = now;
    return { status, apps };
  }

  /** Subscribes to deploys that started since the last look; their events go to every allowed stream. */
  #pollDeploys(): void {
    let deployer: Control['deployer'];
    try {
      deployer = this.#gateway.deployer;
    } catch {
      return;
    }
    const live = new Set<string>();
    for (const app of this.#gateway.appNames()) {
      const deploy = deployer.running(app);
      if (!deploy) continue;
      live.add(deploy.id);
      if (this.#watched.has(deploy.id)) continue;
      const watched: Watched = { deploy, unsubscribe: () => {}, ended: false };
      this.#watched.set(deploy.id, watched);
      // Open streams missed the steps before this look: they get them first, then the live ones.
      for (const event of deploy.events) this.#broadcast(deploy.app, 'deploy', deployEvent(deploy, event));
      let replaying = true;
      watched.unsubscribe = deploy.subscribe((event) => {
        if (event === null) {
          watched.ended = true;
          this.#broadcast(deploy.app, 'deploy-end', { id: deploy.id, app: deploy.app, kind: deploy.kind, user: deploy.user, deploy: deploy.record() });
        } else if (!replaying) this.#broadcast(deploy.app, 'deploy', deployEvent(deploy, event));
      });
      replaying = false;
    }
    // Ended deploys are kept until the deployer lets go of them, so they are never announced twice.
    for (const [id, w] of this.#watched) if (w.ended && !live.has(id)) this.#watched.delete(id);
  }

  #broadcast(app: string, event: string, data: unknown): void {
    for (const sub of this.#subs) if (permits(sub.ctx, app)) write(sub.res, event, data);
  }
}

function deployEvent(deploy: Deploy, event: DeployEvent): Record<string, unknown> {
  return { id: deploy.id, app: deploy.app, kind: deploy.kind, user: deploy.user, event };
}

/** One server-sent event. JSON never contains a raw newline, so `data` is a single line. */
function write(res: ServerResponse, event: string, data: unknown): void {
  if (res.writableEnded || res.destroyed) return;
  res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/** Registers whoami, the event feed and the config reload on the control API. */
export function registerControlRoutes(routes: RouteTable, gateway: Control): void {
  const feed = new EventFeed(gateway);

  routes.add('GET', '/v1/whoami', (_p, _u, _b, _req, _res, ctx) => {
    const deployer = hasRole(ctx.roles, 'deployer');
    const admin = hasRole(ctx.roles, 'admin');
    return {
      status: 200,
      body: {
        user: ctx.user,
        channel: ctx.channel,
        roles: ctx.roles,
        role: topRole(ctx.roles),
        environment: gateway.config.environment,
        apps: ctx.apps ? { rule: ctx.apps.rule, allowed: ctx.apps.sources } : null,
        can: {
          read: hasRole(ctx.roles, 'viewer'),
          deploy: deployer,
          mode: deployer,
          reload: deployer,
          rollback: deployer,
          configReload: admin && !ctx.apps,
          stop: admin && !ctx.apps,
        },
        /** Apps this caller may change (deployer and above): the dashboard shows their buttons. */
        changeable: deployer ? gateway.appNames().filter((a) => permits(ctx, a)) : [],
      },
    };
  });

  routes.add('GET', '/v1/events', async (_p, _u, _b, req, res, ctx) => {
    await feed.follow(req, res, ctx);
    return undefined;
  });

  routes.add(
    'POST',
    '/v1/config/reload',
    async (_p, _u, _b, _req, _res, ctx) => {
      try {
        const result = await gateway.reloadConfig({ user: ctx.user, channel: ctx.channel });
        return { status: 200, body: result, audit: { target: result.summary } };
      } catch (err) {
        if (err instanceof ConfigError) {
          throw new BerthError(ErrorCodes.config, `the config was not reloaded; nothing changed:\n${err.message}`, { cause: err, details: { problems: err.problems } });
        }
        throw err;
      }
    },
    { action: 'config-reload', role: 'admin' },
  );
}
