/**
 * The PostgreSQL store end to end: `berth start` as a child process with `database: postgres://...`, a
 * deploy through the CLI, and a second start that finds the active release, the deploy and the audit
 * rows in the database, not in a SQLite file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, tempDir, untilReady, writeConfig } from '../helpers/gateway.ts';
import { freshDatabase, PASSWORD_ROLE, PASSWORD_ROLE_PASSWORD, POSTGRES_SKIP } from '../helpers/postgres.ts';

test('a gateway on PostgreSQL deploys, and a restart serves the release the database remembers', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = new URL(await freshDatabase(t));
  url.username = PASSWORD_ROLE;
  url.password = PASSWORD_ROLE_PASSWORD;
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  await writeFile(join(v2, 'VERSION'), '2\n');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    database: url.href,
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'info' },
    apps: { shop: { source: v1, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } }, health: { path: '/up', interval: '250ms' } } },
  });

  const first = await spawnGateway(t, file);
  await untilReady(first);
  const deployed = await runCli(['deploy', 'shop', v2, '--socket', first.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  const release = (await http({ port: first.port }, { path: '/' })).json().release;
  first.proc.kill('SIGTERM');
  assert.equal((await first.exited).code, 0, first.stderr());

  const second = await spawnGateway(t, file);
  await untilReady(second);
  assert.equal((await http({ port: second.port }, { path: '/' })).json().release, release, 'the release the database names serves after a restart');
  const history = (await second.api('/v1/history?app=shop')).history;
  assert.ok(history.some((h: any) => h.action === 'deploy' && h.outcome === 'ok'), JSON.stringify(history));
  await assert.rejects(stat(join(dir, 'state', 'berth.db')), /ENOENT/, 'no SQLite file was made');

  const logs = JSON.stringify([...first.logs, ...second.logs]) + first.stderr() + second.stderr();
  assert.match(logs, /store opened/);
  assert.doesNotMatch(logs, /pw-right/, 'the password reaches no log line');
});
