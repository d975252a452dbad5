/**
 * Errors carry a stable `code` (BERTH_E_*) so the CLI, the API and the logs can name a failure without
 * parsing messages. HTTP status for the control API is decided in one place: `httpStatusFor`.
 */
export class BerthError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable detail, returned by the API next to code and message. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BerthError';
    this.code = code;
    this.details = options?.details;
  }
}

/** One problem in a config file, named by its dotted key path. */
export interface ConfigProblem {
  path: string;
  message: string;
}

/** A config that failed to load. `problems` lists every problem found, not just the first. */
export class ConfigError extends BerthError {
  readonly problems: ConfigProblem[];

  constructor(problems: ConfigProblem[], options?: { cause?: unknown }) {
    super(ErrorCodes.config, formatProblems(problems), options);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function formatProblems(problems: ConfigProblem[]): string {
  return problems.map((p) => (p.path ? `${p.path}: ${p.message}` : p.message)).join('\n');
}

export const ErrorCodes = {
  config: 'BERTH_E_CONFIG',
  notFound: 'BERTH_E_NOT_FOUND',
  badRequest: 'BERTH_E_BAD_REQUEST',
  conflict: 'BERTH_E_CONFLICT',
  unauthorized: 'BERTH_E_UNAUTHORIZED',
  forbidden: 'BERTH_E_FORBIDDEN',
  unprocessable: 'BERTH_E_UNPROCESSABLE',
  internal: 'BERTH_E_INTERNAL',
  store: 'BERTH_E_STORE',
  release: 'BERTH_E_RELEASE',
  spawn: 'BERTH_E_SPAWN',
  startup: 'BERTH_E_STARTUP_TIMEOUT',
  unavailable: 'BERTH_E_UNAVAILABLE',
  listen: 'BERTH_E_LISTEN',
  tooLarge: 'BERTH_E_TOO_LARGE',
  timeout: 'BERTH_E_TIMEOUT',
  /** A self-upgrade failed: the new gateway did not take over, and the old one serves on. */
  upgrade: 'BERTH_E_UPGRADE',
  /** The command line was wrong: an unknown flag, a missing argument. The CLI exits 2. */
  usage: 'BERTH_E_USAGE',
} as const;

/** Every code berth gives; an error's code is always one of these. */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

const KNOWN_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes));

/** A code read off the wire (an API answer): kept when berth knows it, else `internal`. */
export function errorCodeFrom(value: unknown): ErrorCode {
  return typeof value === 'string' && KNOWN_CODES.has(value) ? (value as ErrorCode) : ErrorCodes.internal;
}

const STATUS_BY_CODE: Record<string, number> = {
  [ErrorCodes.config]: 422,
  [ErrorCodes.notFound]: 404,
  [ErrorCodes.badRequest]: 400,
  [ErrorCodes.conflict]: 409,
  [ErrorCodes.unauthorized]: 401,
  [ErrorCodes.forbidden]: 403,
  [ErrorCodes.unprocessable]: 422,
  // A request body over its size limit, or too slow to arrive.
  [ErrorCodes.tooLarge]: 413,
  [ErrorCodes.timeout]: 408,
  // The gateway is shutting down or a dependency is not there: try again (not a server bug).
  [ErrorCodes.unavailable]: 503,
  // The state store could not answer (PostgreSQL down): the change was refused; try again once it is back.
  [ErrorCodes.store]: 503,
  // The new gateway of an upgrade failed: the one answering is still the old one, which serves on.
  [ErrorCodes.upgrade]: 502,
};

/** The control API's single mapping from error to HTTP status. Unknown errors are 500. */
export function httpStatusFor(err: unknown): number {
  if (err instanceof BerthError) return STATUS_BY_CODE[err.code] ?? 500;
  return 500;
}

/** A short message for any thrown value, for logs and CLI output. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
