/**
 * A PostgreSQL connection pool (the `pg` driver) as the shared repositories use it (../database.ts):
 * `#run`, the one place where a failed query becomes a BerthError, under the primitives every backend
 * supplies.
 *
 * The URL's password never leaves this file: `name` is the URL redacted (src/lib/redact.ts), and a
 * driver message that quotes the password is scrubbed before it becomes an error or a log line.
 */
import pg from 'pg';
import { BerthError, ErrorCodes, errorMessage } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import { REDACTED, redactUrl } from '../../lib/redact.ts';
import { StoreDatabase } from '../database.ts';
import { failure, type Fault, type FaultMessages } from '../failure.ts';
import { POSTGRES_MIGRATIONS_DIR, type SchemaDriver } from '../migrations.ts';
import { insertRow } from '../statements.ts';
import type { Row, SqlValue, Table } from '../table.ts';
import { PostgresSchema, underMigrationLock } from './schema.ts';

// SQLSTATE codes (PostgreSQL manual, appendix A) for the constraint failures callers can cause.
const UNIQUE_VIOLATION = '23505';
const FOREIGN_KEY_VIOLATION = '23503';

/** How long a connection attempt may take before the start fails (an unreachable host drops packets). */
const CONNECT_TIMEOUT_MS = 10_000;

/** The channel migration 007's triggers announce desired-state and certificate changes on. */
const FLEET_CHANNEL = 'berth_fleet';
const WATCH_RETRY_MIN_MS = 1_000;
const WATCH_RETRY_MAX_MS = 5_000;

export interface PostgresDatabaseOptions {
  /** `postgres://user:password@host:port/database`, with any libpq-style parameters the driver knows. */
  url: string;
  /** Most connections the pool opens. */
  poolSize: number;
  logger: Logger;
}

export class PostgresDatabase extends StoreDatabase {
  /** The URL without its password, for messages and logs. */
  readonly name: string;
  readonly logged: Readonly<Record<string, string>>;
  readonly migrationsDir = POSTGRES_MIGRATIONS_DIR;
  readonly shared = true;
  #opts: PostgresDatabaseOptions;
  #secret: string;
  #pool: pg.Pool | null = null;

  constructor(opts: PostgresDatabaseOptions) {
    super();
    this.#opts = opts;
    this.name = redactUrl(opts.url);
    this.logged = { database: this.name };
    this.#secret = passwordOf(opts.url);
  }

  /**
   * Connects, lets `migrate` bring the schema in line on one client of its own, under the migration lock
   * so gateways starting together take turns, and only then serves the repositories. Messages name the
   * redacted URL.
   */
  async open(migrate: (schema: SchemaDriver) => Promise<void>): Promise<void> {
    if (this.#pool) throw new BerthError(ErrorCodes.store, `store ${this.name} is already open`);
    // application_name marks the gateway's own connections in pg_stat_activity, apart from the apps' (a URL may set its own).
    const pool = new pg.Pool({ connectionString: this.#opts.url, max: this.#opts.poolSize, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, application_name: 'berth' });
    // An idle connection the server drops (a restart, a failover) is an 'error' event; unheard, it would end the process.
    pool.on('error', (err) => this.#opts.logger.warn({ database: this.name, err: this.#scrub(errorMessage(err)) }, 'PostgreSQL connection lost'));
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      await pool.end().catch(() => {});
      const cause = this.#readable(err);
      throw new BerthError(ErrorCodes.store, `cannot connect to PostgreSQL database ${this.name}: ${errorMessage(cause)}`, { cause });
    }
    try {
      await underMigrationLock(client, () => migrate(new PostgresSchema(client, this.name)));
    } catch (err) {
      client.release(true);
      await pool.end().catch(() => {});
      if (err instanceof BerthError) throw err;
      const cause = this.#readable(err);
      throw new BerthError(ErrorCodes.store, `cannot prepare PostgreSQL database ${this.name}: ${errorMessage(cause)}`, { cause });
    }
    // Closed rather than pooled: `migrate` held session state (the migration lock), which no later query may inherit.
    client.release(true);
    this.#pool = pool;
  }

  /**
   * LISTENs on the fleet's channel (migration 007's triggers) on a connection of its own, outside the
   * pool. A lost connection is reported (`onConnection(false)`) and made again, every second at first
   * and at most every 5s, for as long as the watch lasts; `onConnection(true)` says it is back (changes
   * made meanwhile were not heard: the caller looks again).
   */
  watch(onChange: (topic: string) => void, onConnection?: (connected: boolean) => void): () => void {
    let stopped = false;
    let client: pg.Client | null = null;
    let timer: NodeJS.Timeout | null = null;
    let delay = WATCH_RETRY_MIN_MS;
    let connected = false;
    const log = this.#opts.logger;
    const lost = (err: unknown) => {
      if (client === null) return;
      const was = client;
      client = null;
      was.removeAllListeners('notification');
      void was.end().catch(() => {});
      if (connected) {
        connected = false;
        log.warn({ database: this.name, err: this.#scrub(errorMessage(err)) }, 'fleet notifications lost; polling until they are back');
        onConnection?.(false);
      }
      schedule();
    };
    const schedule = () => {
      if (stopped) return;
      timer = setTimeout(connect, delay);
      timer.unref();
      delay = Math.min(delay * 2, WATCH_RETRY_MAX_MS);
    };
    const connect = async () => {
      timer = null;
      if (stopped) return;
      // keepAlive: a connection the network dropped silently is noticed, not listened on forever.
      const c = new pg.Client({ connectionString: this.#opts.url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, application_name: 'berth', keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
      client = c;
      // A late event of a connection already given up on must not tear down its successor.
      c.on('error', (err) => {
        if (client === c) lost(err);
      });
      c.on('end', () => {
        if (client === c) lost(new Error('connection closed'));
      });
      c.on('notification', (msg) => {
        if (msg.channel === FLEET_CHANNEL && typeof msg.payload === 'string') onChange(msg.payload);
      });
      try {
        await c.connect();
        await c.query(`LISTEN ${FLEET_CHANNEL}`);
      } catch (err) {
        if (client === c) lost(err);
        else void c.end().catch(() => {});
        return;
      }
      if (stopped || client !== c) {
        void c.end().catch(() => {});
        return;
      }
      delay = WATCH_RETRY_MIN_MS;
      if (!connected) {
        connected = true;
        onConnection?.(true);
      }
    };
    void connect();
    return () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      const c = client;
      client = null;
      if (c) {
        c.removeAllListeners();
        c.on('error', () => {});
        void c.end().catch(() => {});
      }
    };
  }

  async close(): Promise<boolean> {
    const pool = this.#pool;
    if (!pool) return false;
    this.#pool = null;
    await pool.end();
    return true;
  }

  async rows(action: string, sql: string, args: SqlValue[], messages?: FaultMessages): Promise<Row[]> {
    return (await this.#run(action, sql, args, messages)).rows;
  }

  async changes(action: string, sql: string, args: SqlValue[], messages?: FaultMessages): Promise<number> {
    return (await this.#run(action, sql, args, messages)).rowCount ?? 0;
  }

  /** PostgreSQL hands back an identity id only when asked: RETURNING the table's generated column. */
  async insert(action: string, table: Table<object>, values: SqlValue[], messages?: FaultMessages): Promise<number> {
    const returning = table.generated;
    const row = (await this.#run(action, `${insertRow(table)}${returning ? ` RETURNING ${returning}` : ''}`, values, messages)).rows[0];
    return returning && row ? Number(row[returning]) : 0;
  }

  /** Runs one query on the pool, throwing BERTH_E_STORE when the store is not open and mapping a failed query to a BerthError. */
  async #run(action: string, sql: string, args: SqlValue[], messages?: FaultMessages): Promise<pg.QueryResult<Row>> {
    const pool = this.#connection();
    try {
      return await pool.query<Row>(sql, args.map(storable));
    } catch (err) {
      throw failure(action, this.#readable(err), postgresFault(err), messages);
    }
  }

  #connection(): pg.Pool {
    if (!this.#pool) throw new BerthError(ErrorCodes.store, `store ${this.name} is not open`);
    return this.#pool;
  }

  /** `text` with the password, should a driver message ever quote it, replaced. */
  #scrub(text: string): string {
    return this.#secret ? text.replaceAll(this.#secret, REDACTED) : text;
  }

  /**
   * `err` as it is when its message is fit to show; else an Error keeping its code, with the password
   * scrubbed from the message, or with a message made of its parts when it has none of its own.
   */
  #readable(err: unknown): unknown {
    const message = driverMessage(err);
    if (message === errorMessage(err) && !(this.#secret && message.includes(this.#secret))) return err;
    return Object.assign(new Error(this.#scrub(message)), { code: (err as { code?: unknown } | null)?.code });
  }
}

/**
 * A value PostgreSQL's text can hold: it refuses the NUL character, which SQLite keeps, and a process's
 * output may carry one. It becomes U+FFFD (the replacement character) rather than failing the write.
 */
function storable(value: SqlValue): SqlValue {
  return typeof value === 'string' && value.includes('\0') ? value.replaceAll('\0', '\uFFFD') : value;
}

/** The password in a database URL, decoded as the driver sends it; '' when there is none. */
function passwordOf(url: string): string {
  try {
    return decodeURIComponent(new URL(url).password);
  } catch {
    return '';
  }
}

/**
 * What went wrong, in words: a connection refused on every address of a host is an AggregateError
 * without a message of its own, so its parts speak for it.
 */
function driverMessage(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0 && !err.message) return err.errors.map((e) => errorMessage(e)).join('; ');
  return errorMessage(err) || String((err as { code?: unknown } | null)?.code ?? 'unknown error');
}

function postgresFault(err: unknown): Fault {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === UNIQUE_VIOLATION) return 'duplicate';
  if (code === FOREIGN_KEY_VIOLATION) return 'missing-parent';
  return 'other';
}
