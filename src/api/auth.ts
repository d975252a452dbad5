/**
 * Who may do what on the control API (SPEC § Control API, "Access on TCP").
 *
 * A TCP caller is identified by a bearer token (compared as SHA-256 digests in constant time) or, when
 * `control.call_context_header` is set, by the base64 JSON identity a trusted auth proxy puts in that
 * header. Roles rank viewer < deployer < admin. `control.permissions[<environment>][<user>]` limits a
 * user to apps matching its regexes; users not listed are unrestricted. The unix socket is trusted
 * through its file permissions and never comes here: its callers are unrestricted admins.
 *
 * When no environment is selected (`--env`/`BERTH_ENV` unset) the permissions of the key `default`
 * apply, so a single-environment setup can still restrict users.
 *
 * Permission regexes match the whole app name (`shop` does not grant `shop-admin`): each is compiled
 * as `^(?:<regex>)$`. The call-context header is honoured only from `control.call_context_from`
 * (default: loopback). From any other address it is ignored, as nginx ignores X-Real-IP from outside
 * `set_real_ip_from`: the request then needs a bearer token, and a 401 says why. Ignoring rather than
 * refusing lets a client that also carries a token through the same path keep working.
 * A call context's user name is limited to a safe set of characters and may not take a name berth
 * itself writes into the audit log (`berth-start`, `scheduler`...), so it can never pose as berth.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { ControlConfig, Role } from '../config/schema.ts';
import { DEFAULT_CALL_CONTEXT_FROM, ROLES } from '../config/schema.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { AppRule, RequestContext } from './request.ts';

export type { AppRule } from './request.ts';

/** The permissions key used when the gateway runs without a selected environment. */
export const DEFAULT_PERMISSIONS_ENVIRONMENT = 'default';
/** A call-context header longer than this is refused before it is decoded. */
export const MAX_CALL_CONTEXT_BYTES = 4096;
/**
 * A user name a call context (or the CLI on the socket) may carry: it ends up in logs, the audit log
 * and `berth history --user`, so it is plain: a letter or digit, then letters, digits, `._@-`, 64 at most.
 */
export const USER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
/**
 * Names berth writes into audit rows for its own actions and for callers it cannot name (src/gateway.ts,
 * src/scheduler, src/api). Compared case-insensitively.
 */
export const BERTH_ACTOR_NAMES: ReadonlySet<string> = new Set(['berth-start', 'supervisor', 'scheduler', 'reload-trigger', 'sighup', 'sigusr2', 'cleanup', 'socket', 'unauthenticated', 'fleet', 'cache-flush']);
/**
 * Names a call context may not take: berth's own actors, and names that read as berth or the system.
 * Compared case-insensitively.
 */
export const RESERVED_USER_NAMES: ReadonlySet<string> = new Set([...BERTH_ACTOR_NAMES, 'berth', 'internal', 'system', 'root', 'unknown']);

/** Whether `name` is one berth writes into the audit log for its own actions. */
export function berthActorName(name: string): boolean {
  return BERTH_ACTOR_NAMES.has(name.toLowerCase());
}

/** Longest bearer token accepted; longer ones are refused without hashing them. */
const MAX_TOKEN_LENGTH = 4096;

const RANK: Record<Role, number> = { viewer: 1, deployer: 2, admin: 3 };

/**
 * The role each audited action needs. Reads (GET) need `viewer`; a change whose action is not listed
 * needs `admin`, so an endpoint added without thinking about roles is safe by default.
 */
export const ACTION_ROLES: Readonly<Record<string, Role>> = {
  deploy: 'deployer',
  rollback: 'deployer',
  reload: 'deployer',
  mode: 'deployer',
  run: 'deployer',
  flush: 'deployer',
  scale: 'deployer',
  'config-reload': 'admin',
  stop: 'admin',
};

/** The role a request needs: the route's own, else by method and action. */
export function requiredRole(method: string, action: string | null, role?: Role): Role {
  if (role) return role;
  if (method === 'GET' || method === 'HEAD') return 'viewer';
  return (action !== null ? ACTION_ROLES[action] : undefined) ?? 'admin';
}

/** Whether any of `roles` ranks at least `needed`. */
export function hasRole(roles: readonly Role[], needed: Role): boolean {
  for (const r of roles) if (RANK[r] >= RANK[needed]) return true;
  return false;
}

/** The highest of `roles`, or null for none. */
export function topRole(roles: readonly Role[]): Role | null {
  let top: Role | null = null;
  for (const r of roles) if (top === null || RANK[r] > RANK[top]) top = r;
  return top;
}

/** Whether the caller may touch `app` (unrestricted callers may touch every app). */
export function permits(ctx: RequestContext, app: string): boolean {
  const rule = ctx.apps;
  if (!rule) return true;
  for (const re of rule.patterns) if (re.test(app)) return true;
  return false;
}

/** Throws 403 naming the app and the rule when the caller may not touch `app`. */
export function assertPermitted(ctx: RequestContext, app: string, what: string): void {
  if (permits(ctx, app)) return;
  const rule = ctx.apps!;
  throw new BerthError(ErrorCodes.forbidden, `user ${ctx.user} may not ${what} app "${app}": ${rule.rule} allows only ${rule.sources.join(', ') || 'no app'}`, {
    details: { app, rule: rule.rule, allowed: rule.sources },
  });
}

/**
 * The caller's right to a request: its role first, then the app it names. Gateway-wide changes (stop,
 * config reload) name no app; a user limited to some apps may not make them.
 */
export function authorize(ctx: RequestContext, needed: Role, app: string | null, what: string): void {
  if (!hasRole(ctx.roles, needed)) {
    const has = ctx.roles.length ? ctx.roles.join(', ') : 'no role';
    throw new BerthError(ErrorCodes.forbidden, `user ${ctx.user} (${has}) may not ${what}: it needs the ${needed} role`, { details: { needed, roles: ctx.roles } });
  }
  if (app !== null) assertPermitted(ctx, app, what);
  else if (ctx.apps && needed !== 'viewer') {
    throw new BerthError(ErrorCodes.forbidden, `user ${ctx.user} may not ${what}: it is limited to some apps by ${ctx.apps.rule} and this changes the whole gateway`, {
      details: { rule: ctx.apps.rule, allowed: ctx.apps.sources },
    });
  }
}

/** `sha256:<hex>` of a token: the form `control.tokens.<user>.hash` takes. */
export function hashToken(token: string): string {
  return `sha256:${createHash('sha256').update(token, 'utf8').digest('hex')}`;
}

function unauthorized(message: string): BerthError {
  return new BerthError(ErrorCodes.unauthorized, message);
}

/** Whether `name` is one berth keeps for itself. */
export function reservedUserName(name: string): boolean {
  return RESERVED_USER_NAMES.has(name.toLowerCase());
}

/**
 * Compiles `control.permissions` regexes so each matches the whole app name. The group keeps an
 * alternation (`shop|blog`) inside the anchors; a source already anchored (`^shop$`) means the same.
 */
export function compilePermission(source: string): RegExp {
  return new RegExp(`^(?:${source})$`);
}

/** `control.call_context_from` as a BlockList (used as an allow list). Entries are IPs or CIDRs. */
export function addressList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const slash = entry.indexOf('/');
    const ip = slash < 0 ? entry : entry.slice(0, slash);
    const type = isIPv4(ip) ? 'ipv4' : isIPv6(ip) ? 'ipv6' : null;
    // The config validation refuses bad entries; one that slips through matches nothing.
    if (type === null) continue;
    if (slash < 0) list.addAddress(ip, type);
    else {
      const bits = Number(entry.slice(slash + 1));
      if (Number.isInteger(bits) && bits >= 0 && bits <= (type === 'ipv4' ? 32 : 128)) list.addSubnet(ip, bits, type);
    }
  }
  return list;
}

/** Whether `address` (a socket's remoteAddress) is in `list`; an IPv4-mapped IPv6 address counts as IPv4. */
export function addressIn(list: BlockList, address: string | undefined): boolean {
  if (!address) return false;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return list.check(mapped[1], 'ipv4');
  if (isIPv4(address)) return list.check(address, 'ipv4');
  if (isIPv6(address)) return list.check(address, 'ipv6');
  return false;
}

/**
 * Decodes a call-context header: base64 (or base64url) of `{"user": "...", "roles": [...]}`. Every
 * defect is a 401 saying what is wrong, never echoing the value (it may carry more than an identity).
 */
export function parseCallContext(name: string, value: string | string[] | undefined): { user: string; roles: Role[] } {
  if (Array.isArray(value)) throw unauthorized(`the ${name} header was sent more than once`);
  if (value === undefined || value === '') throw unauthorized(`the ${name} header is empty`);
  if (value.length > MAX_CALL_CONTEXT_BYTES) throw unauthorized(`the ${name} header is larger than ${MAX_CALL_CONTEXT_BYTES} bytes`);
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(value)) throw unauthorized(`the ${name} header is not base64`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(value, 'base64')));
  } catch {
    throw unauthorized(`the ${name} header is not base64 of a JSON object`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw unauthorized(`the ${name} header is not base64 of a JSON object`);
  const { user, roles } = parsed as { user?: unknown; roles?: unknown };
  if (typeof user !== 'string' || !USER_NAME_RE.test(user)) {
    throw unauthorized(`the ${name} header needs "user": 1 to 64 characters, a letter or digit first, then letters, digits and . _ @ -`);
  }
  if (reservedUserName(user)) throw unauthorized(`the ${name} header names the user "${user}", which berth keeps for itself`);
  if (!Array.isArray(roles) || roles.length === 0) throw unauthorized(`the ${name} header needs "roles": a non-empty list of ${ROLES.join(', ')}`);
  for (const r of roles) {
    if (typeof r !== 'string' || !ROLES.includes(r as Role)) throw unauthorized(`the ${name} header names an unknown role ${JSON.stringify(r)} (known: ${ROLES.join(', ')})`);
  }
  return { user, roles: [...new Set(roles as Role[])] };
}

interface TokenEntry {
  user: string;
  digest: Buffer;
  roles: Role[];
}

/**
 * Authentication and permissions for one config. Built once per config (start and config reload), so a
 * request only hashes its token and walks precompiled regexes.
 */
export class Auth {
  readonly environment: string;
  readonly callContextHeader: string | null;
  /** `control.call_context_from`, for messages. */
  readonly callContextFrom: readonly string[];
  #callContextFrom: BlockList;
  #tokens: TokenEntry[];
  #rules = new Map<string, AppRule>();

  constructor(control: ControlConfig, environment: string | null) {
    this.environment = environment ?? DEFAULT_PERMISSIONS_ENVIRONMENT;
    this.callContextHeader = control.callContextHeader;
    this.callContextFrom = control.callContextFrom ?? DEFAULT_CALL_CONTEXT_FROM;
    this.#callContextFrom = addressList(this.callContextFrom);
    this.#tokens = Object.entries(control.tokens)
      .filter(([, t]) => /^sha256:[0-9a-f]{64}$/.test(t.hash))
      .map(([user, t]) => ({ user, digest: Buffer.from(t.hash.slice('sha256:'.length), 'hex'), roles: t.roles }));
    const byUser = control.permissions[this.environment] ?? {};
    // User names match case-insensitively: a call context naming `Alice` must not escape the rule
    // written for `alice` (users not listed are unrestricted, so a miss fails open). The config loader
    // refuses two entries that differ only in case.
    for (const [user, sources] of Object.entries(byUser)) {
      this.#rules.set(user.toLowerCase(), { rule: `control.permissions.${this.environment}.${user}`, sources, patterns: sources.map(compilePermission) });
    }
  }

  /** The app rule that limits `user` (any case), or null when the user is unrestricted. */
  ruleFor(user: string): AppRule | null {
    return this.#rules.get(user.toLowerCase()) ?? null;
  }

  /** Whether the call-context header is honoured on a connection from `address`. */
  trustsCallContextFrom(address: string | undefined): boolean {
    return addressIn(this.#callContextFrom, address);
  }

  /**
   * Identifies a TCP caller coming from `remoteAddress`, or throws 401. The call-context header, when
   * configured, present and sent from `control.call_context_from`, wins: it is set by the trusted proxy
   * in front, which may pass the client's own Authorization through. From elsewhere it is ignored, and
   * so it is when `peerRefusal` says why this connection may not carry one whatever its address (it
   * belongs to an app's user: src/api/local-peer.ts).
   */
  authenticate(headers: IncomingHttpHeaders, remoteAddress: string | undefined, peerRefusal: string | null = null): RequestContext {
    const header = this.callContextHeader;
    const sent = header !== null && headers[header] !== undefined;
    const trusted = sent && peerRefusal === null && this.trustsCallContextFrom(remoteAddress);
    if (trusted) {
      const { user, roles } = parseCallContext(header!, headers[header!]);
      return { user, channel: 'tcp', roles, apps: this.ruleFor(user) };
    }
    const auth = headers.authorization;
    if (auth === undefined) {
      // The trusted addresses are not told: they name the proxy in front, which a stranger need not know
      // (the server logs them with the refusal).
      if (sent && peerRefusal !== null) throw unauthorized(`the ${header} header is not honoured on this connection: ${peerRefusal}; send an Authorization: Bearer token`);
      if (sent) throw unauthorized(`the ${header} header is not honoured from ${remoteAddress ?? 'this connection'}: it is not in control.call_context_from; send an Authorization: Bearer token`);
      const how = header !== null ? `an Authorization: Bearer token or the ${header} header` : 'an Authorization: Bearer token';
      throw unauthorized(`the control API needs ${how}`);
    }
    const m = /^Bearer +(\S+) *$/i.exec(auth);
    if (!m || m[1].length > MAX_TOKEN_LENGTH) throw unauthorized('the Authorization header must be "Bearer <token>"');
    const entry = this.#match(m[1]);
    if (!entry) throw unauthorized('the bearer token is not valid');
    return { user: entry.user, channel: 'tcp', roles: entry.roles, apps: this.ruleFor(entry.user) };
  }

  /** Compares the token's digest with every configured one, without stopping early on a match. */
  #match(token: string): TokenEntry | null {
    const digest = createHash('sha256').update(token, 'utf8').digest();
    let found: TokenEntry | null = null;
    for (const t of this.#tokens) if (timingSafeEqual(t.digest, digest) && found === null) found = t;
    return found;
  }
}
