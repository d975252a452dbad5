/**
 * Credentials in a git source URL never show: a real gateway (in this process, so its log lines can be
 * read), real deploys through the control API on its unix socket, a real git repository on disk reached
 * through file:// with fake credentials, and the real SQLite file read byte for byte.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { redactText, redactUrl } from '../../src/lib/redact.ts';

const PASSWORD = 's3cr3t-pass-9f2c';
const TOKEN = 'tok-7d41e0aa';

test('redactUrl hides userinfo and credential query parameters, and keeps where the source is', () => {
  assert.equal(redactUrl('https://deployer:s3cr3t@git.example/shop.git#main'), 'https://***@git.example/shop.git#main');
  assert.equal(redactUrl('https://ghp_abcdef@github.com/o/r.git'), 'https://***@github.com/o/r.git');
  assert.equal(redactUrl('https://u:p@ss/w@host:8443/r.git'), 'https://***@host:8443/r.git');
  // A password with an unescaped "#" or "?" (git would cut the URL there, and the deploy fails): the
  // record of that failed deploy must not hold it either.
  assert.equal(redactUrl('https://u:pa#ss@host/r.git'), 'https://***@host/r.git');
  assert.equal(redactUrl('https://u:pa?ss@host/r.git#main'), 'https://***@host/r.git#main');
  assert.equal(redactText(`deploy of https://u:${PASSWORD}#x@h/r.git failed`), 'deploy of https://***@h/r.git failed');
  // A ref holding "@" is not userinfo.
  assert.equal(redactUrl('https://host/r.git#main@{1}'), 'https://host/r.git#main@{1}');
  assert.equal(
    redactUrl('https://h/r.git?token=a&access_token=b&private_token=c&password=d&key=e&sig=f&X-Amz-Signature=g&ref=main#v1'),
    'https://h/r.git?token=***&access_token=***&private_token=***&password=***&key=***&sig=***&X-Amz-Signature=***&ref=main#v1',
  );
  for (const same of ['/srv/app', '/srv/repo#main', 'git@github.com:o/r.git', 'file:///srv/repo#main', 'https://h/r.git?ref=main']) assert.equal(redactUrl(same), same);
  assert.equal(
    redactText(`fatal: unable to access 'https://u:${PASSWORD}@h/r.git/?private_token=${TOKEN}': refused {"source":"https://x:y@h/r#m"}`),
    `fatal: unable to access 'https://***@h/r.git/?private_token=***': refused {"source":"https://***@h/r#m"}`,
  );
});

test('a git source with credentials: the log, deploy records and events, releases, audit and history never show them', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'debug' },
    apps: {
      shop: {
        source: v1,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } },
        health: { path: '/up', interval: '200ms', startup_timeout: '5s' },
        timeouts: { drain: '2s', stop: '2s' },
      },
    },
  });
  const { gateway, port, sink } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  const socket = gateway.config.control.socket;

  // A real repository, reached through file:// with credentials git ignores but must never be shown.
  const repo = await fixtureApp(dir, 'repo');
  await writeFile(join(repo, 'VERSION'), 'from-git\n');
  const git = (...args: string[]) => execFileSync('git', ['-c', 'user.name=x', '-c', 'user.email=x@y', '-c', 'init.defaultBranch=main', ...args], { cwd: repo, encoding: 'utf8' }).trim();
  git('init', '-q');
  git('add', '-A');
  git('commit', '-q', '-m', 'one');
  const good = `file://deployer:${PASSWORD}@localhost${repo}#main`;
  // An unreachable https remote: the clone fails, and git's own error quotes the URL (with its query).
  const bad = `https://deployer:${PASSWORD}@127.0.0.1:1/shop.git?access_token=${TOKEN}#main`;
  // A query on a file:// URL: git reads it as part of the path and echoes it without the scheme.
  const badPath = `file://${TOKEN}@localhost${repo}?private_token=${TOKEN}#main`;

  const deploy = async (source: string) => {
    const res = await http({ socketPath: socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body: JSON.stringify({ source }), headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 202, res.body);
    const id: string = res.json().id;
    return waitFor(
      async () => {
        const r = await http({ socketPath: socket }, { path: `/v1/deploys/${id}` });
        const body = r.json();
        return body.state === 'running' ? null : { id, body, text: r.body };
      },
      { timeoutMs: 60_000, message: `deploy ${id} to finish` },
    );
  };
  const ok = await deploy(good);
  assert.equal(ok.body.state, 'succeeded', ok.text);
  assert.equal(ok.body.source, `file://***@localhost${repo}#main`);
  assert.match(ok.text, /release \S+ from file:\/\/\*\*\*@localhost/);
  assert.equal((await http({ port }, { path: '/' })).json().release, ok.body.releaseId, 'the real URL was used to fetch');
  const served = (await http({ port }, { path: '/' })).json();
  assert.equal(await readFile(join(served.cwd, 'VERSION'), 'utf8'), 'from-git\n');

  const failed = await deploy(bad);
  assert.equal(failed.body.state, 'failed');
  assert.equal(failed.body.failedStep, 'prepare');
  assert.match(failed.body.error, /git clone of https:\/\/\*\*\*@127\.0\.0\.1:1\/shop\.git\?access_token=\*\*\* failed/);
  const failedPath = await deploy(badPath);
  assert.equal(failedPath.body.state, 'failed');
  assert.match(failedPath.body.error, /private_token=\*\*\*/);

  // Every surface a viewer can read.
  const surfaces: Record<string, string> = {
    deploy: ok.text,
    failedDeploy: failed.text,
    failedPath: failedPath.text,
    follow: (await http({ socketPath: socket }, { path: `/v1/deploys/${failed.id}?follow=1` })).body,
    deploys: (await http({ socketPath: socket }, { path: '/v1/apps/shop/deploys' })).body,
    releases: (await http({ socketPath: socket }, { path: '/v1/apps/shop/releases' })).body,
    history: (await http({ socketPath: socket }, { path: '/v1/history?limit=100' })).body,
    log: sink.lines.map((l) => JSON.stringify(l)).join('\n'),
  };
  for (const [where, text] of Object.entries(surfaces)) {
    assert.ok(!text.includes(PASSWORD), `${where} shows the password: ${text.slice(0, 2000)}`);
    assert.ok(!text.includes(TOKEN), `${where} shows the token: ${text.slice(0, 2000)}`);
  }
  assert.match(surfaces.history, /\*\*\*@localhost/, 'the audit row keeps the redacted source');
  assert.match(surfaces.log, /\*\*\*@127\.0\.0\.1/);

  // And the database itself, byte for byte (the WAL too), after the gateway has written everything.
  await gateway.stop();
  const stateDir = join(dir, 'state');
  for (const name of await readdir(stateDir)) {
    if (!name.startsWith('berth.db')) continue;
    const bytes = await readFile(join(stateDir, name));
    assert.ok(!bytes.includes(PASSWORD), `${name} holds the password`);
    assert.ok(!bytes.includes(TOKEN), `${name} holds the token`);
  }
});

test('rows written in clear before redaction existed come out redacted', async (t) => {
  const dir = await tempDir(t);
  const store = new SqliteStore({ path: join(dir, 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  await store.open();
  t.after(() => store.close());
  // Written straight into the table, as an older berth did.
  const { DatabaseSync } = await import('node:sqlite');
  const db = new DatabaseSync(join(dir, 'berth.db'));
  const url = `https://u:${PASSWORD}@h/r.git#main`;
  db.prepare('INSERT INTO audit (occurred_at, user_name, channel, action, app, target, outcome, detail, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)').run(
    new Date().toISOString(), 'alice', 'socket', 'deploy', 'shop', JSON.stringify({ source: url }), 'failed', `git clone of ${url} failed`, null,
  );
  db.close();
  const rows = await store.listAudit({});
  assert.equal(rows.length, 1);
  assert.equal(rows[0].target, JSON.stringify({ source: 'https://***@h/r.git#main' }));
  assert.equal(rows[0].detail, 'git clone of https://***@h/r.git#main failed');
});
