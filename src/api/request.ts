/**
 * The shapes a control API route works with: who is calling, what a handler returns, and the table the
 * domain route files register into. In their own file so routes.ts, auth.ts and the *-routes.ts files
 * can all name them without importing one another.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Role } from '../config/schema.ts';
import type { AuditChannel } from '../store/store.ts';

/** The apps a user may touch in the active environment, and the config key that says so. */
export interface AppRule {
  /** `control.permissions.<environment>.<user>`, for messages. */
  rule: string;
  sources: string[];
  patterns: RegExp[];
}

/** Who is calling: set by the server from the socket (trusted) or from TCP auth. */
export interface RequestContext {
  user: string;
  channel: Exclude<AuditChannel, 'internal'>;
  roles: Role[];
  /** The apps this caller may touch (control.permissions); absent or null: every app. */
  apps?: AppRule | null;
}

export interface ApiResult {
  status: number;
  body: unknown;
  /** For audited endpoints: what the change acted on, and (for work that goes on after the reply,
   *  like a deploy) a promise of its final outcome. */
  audit?: { target?: string | null; settle?: Promise<{ outcome: 'ok' | 'failed'; detail?: string | null }> };
}

export type Handler = (
  params: Record<string, string>,
  url: URL,
  body: unknown,
  req: IncomingMessage,
  res: ServerResponse,
  ctx: RequestContext,
) => Promise<ApiResult | undefined> | ApiResult | undefined;

export interface RouteOptions {
  /** Audited change: the action name written to the audit log (deploy, mode, run...). */
  action?: string;
  /** The role the endpoint needs; default: viewer for GET, else by action (src/api/auth.ts ACTION_ROLES). */
  role?: Role;
  /**
   * What the audit row names as the change's target, from the request body (the `scale` of `web`);
   * null or undefined: the body itself, as for every other change.
   */
  auditTarget?: (body: unknown) => string | null | undefined;
}

/** Where a domain route file registers its endpoints (ApiRoutes). */
export interface RouteTable {
  /** Registers an endpoint; `:name` segments become params. */
  add(method: string, path: string, handler: Handler, opts?: RouteOptions): void;
}
