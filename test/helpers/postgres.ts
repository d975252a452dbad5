/**
 * A throwaway PostgreSQL 15 server for the tests of one file: node --test runs each file in its own
 * process, so the first test that asks starts one server for the process (initdb into a temp dir, then
 * `postgres` on a free loopback port with its socket in that dir), and the process's exit stops it and
 * removes the dir. Each test then gets a database of its own from it (`freshDatabase`).
 *
 * As root (as here and in CI) the server runs as the `postgres` user through runuser, since PostgreSQL
 * refuses to run as root. Start-up is kept short: no fsync anywhere (initdb --no-sync, fsync=off), trust
 * authentication on the socket and loopback, except for one role that must log in with a password, for
 * the tests of a wrong password.
 */
import type { TestContext } from 'node:test';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chownSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

/** Where Debian's postgresql-15 puts its programs; BERTH_PG_BIN points elsewhere. */
const BIN = process.env.BERTH_PG_BIN ?? '/usr/lib/postgresql/15/bin';
const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 30_000;

/** The role that logs in with a password (scram-sha-256) on loopback, and its password. */
export const PASSWORD_ROLE = 'berth_pw';
export const PASSWORD_ROLE_PASSWORD = 'pw-right-7f3a';

/**
 * Why the PostgreSQL tests cannot run here, or undefined when they can. Under CI=true they always run:
 * a CI machine without the server fails them rather than skipping them.
 */
export const POSTGRES_SKIP: string | undefined =
  process.env.CI === 'true' || (existsSync(join(BIN, 'initdb')) && existsSync(join(BIN, 'postgres')))
    ? undefined
    : `PostgreSQL 15 is not installed (no initdb/postgres in ${BIN}; apt-get install postgresql-15, or set BERTH_PG_BIN)`;

export interface PostgresServer {
  port: number;
  /** A URL of `database` on this server, as `user` (the superuser by default) with `password`, if any. */
  url(database: string, user?: string, password?: string): string;
  /** Stops the server (fast shutdown: sessions are ended) and waits until it is gone; its data stays. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data, and waits until it answers. */
  start(): Promise<void>;
}

let started: Promise<PostgresServer> | null = null;
let databases = 0;

/** The server of this process, started on first use. */
export function postgresServer(): Promise<PostgresServer> {
  started ??= start();
  return started;
}

/**
 * A new empty database on the server, dropped (whoever is still connected) when `t` ends, after
 * `before`; returns its superuser URL. Its default collation is ICU's en-US, where `a` sorts before `B`:
 * berth's columns must sort byte by byte as SQLite does all the same (COLLATE "C"), and this shows it.
 */
export async function freshDatabase(t: TestContext, before?: () => Promise<void>): Promise<string> {
  const server = await postgresServer();
  const name = `berth_test_${process.pid}_${++databases}`;
  await admin(server, `CREATE DATABASE ${name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'`);
  t.after(async () => {
    await before?.();
    await admin(server, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
  return server.url(name);
}

/** Runs one statement as the superuser on the `postgres` database. */
export async function admin(server: PostgresServer, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: server.url('postgres') });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

async function start(): Promise<PostgresServer> {
  const asRoot = process.getuid?.() === 0;
  // As root, every command runs as `postgres`, which must own the dir.
  const as = (cmd: string, args: string[]): [string, string[]] => (asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]);
  const dir = mkdtempSync(join(tmpdir(), 'berth-pg-'));
  const data = join(dir, 'data');
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }));
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }));
    chownSync(dir, uid, gid);
  }
  process.on('exit', () => {
    stopNow(as, data, 'immediate');
    rmSync(dir, { recursive: true, force: true });
  });

  const [initCmd, initArgs] = as(join(BIN, 'initdb'), ['-D', data, '--no-sync', '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C.UTF-8']);
  const init = spawnSync(initCmd, initArgs, { encoding: 'utf8' });
  if (init.status !== 0) throw new Error(`initdb failed (${init.status}): ${init.stderr || init.stdout || init.error}`);
  // Rewriting the file keeps its owner (postgres): trust everywhere but for the password role.
  writeFileSync(join(data, 'pg_hba.conf'), [
    'local all all trust',
    `host all ${PASSWORD_ROLE} ${HOST}/32 scram-sha-256`,
    `host all all ${HOST}/32 trust`,
    '',
  ].join('\n'));

  const port = await freePort();
  const logFile = join(dir, 'postgres.log');
  const server: PostgresServer = {
    port,
    url: (database, user = 'postgres', password) => `postgres://${encodeURIComponent(user)}${password === undefined ? '' : `:${encodeURIComponent(password)}`}@${HOST}:${port}/${database}`,
    async stop() {
      stopNow(as, data, 'fast');
    },
    async start() {
      await launch();
    },
  };

  /** Starts `postgres` on the data dir and waits until it answers. */
  const launch = async (): Promise<void> => {
    const log = openSync(logFile, 'a');
    const [cmd, args] = as(join(BIN, 'postgres'), [
      '-D', data, '-p', String(port), '-k', dir,
      '-c', `listen_addresses=${HOST}`, '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
      '-c', 'max_connections=200',
    ]);
    const child = spawn(cmd, args, { stdio: ['ignore', log, log] });
    closeSync(log);
    // The server must not keep the test process alive: its exit hook stops it.
    child.unref();
    let exited: string | null = null;
    child.on('exit', (code, signal) => {
      exited = `exited with ${signal ?? code}`;
    });
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      try {
        await admin(server, 'SELECT 1');
        return;
      } catch (err) {
        if (exited || Date.now() > deadline) {
          const tail = readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
          throw new Error(`PostgreSQL did not start on port ${port} (${exited ?? 'timed out'}): ${(err as Error).message}\n${tail}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };

  await launch();
  await admin(server, `CREATE ROLE ${PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '${PASSWORD_ROLE_PASSWORD}'`);
  return server;
}

/** Stops the server on `data` and waits until it is gone; synchronous, so that the exit hook can use it. */
function stopNow(as: (cmd: string, args: string[]) => [string, string[]], data: string, mode: 'fast' | 'immediate'): void {
  if (!existsSync(join(data, 'postmaster.pid'))) return;
  const [cmd, args] = as(join(BIN, 'pg_ctl'), ['stop', '-D', data, '-m', mode, '-w', '-t', '20']);
  spawnSync(cmd, args, { stdio: 'ignore' });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const address = srv.address();
      srv.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}
