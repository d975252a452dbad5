/**
 * `max_release_size` and `max_release_files` in a real gateway: an archive bomb and a many-file archive
 * fail the deploy at prepare naming the limit, leave no partial release, and the running release keeps
 * serving every request.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, startGateway, tempDir, writeConfig } from '../helpers/gateway.ts';

test('an archive bomb and a many-file archive fail at prepare naming the limit; the running release keeps serving', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    apps: {
      shop: {
        source: v1,
        max_release_size: '1m',
        max_release_files: 60,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } },
        health: { path: '/up', interval: '200ms', startup_timeout: '5s' },
        timeouts: { drain: '2s', stop: '2s' },
      },
    },
  });
  const { gateway, port } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  assert.equal(gateway.config.apps.shop.maxReleaseBytes, 1024 * 1024);
  assert.equal(gateway.config.apps.shop.maxReleaseFiles, 60);
  const serving = (await http({ port }, { path: '/' })).json().release;
  const socket = gateway.config.control.socket;

  // The fixture app plus 20 MiB of zeros: a few dozen KB compressed.
  const bombSrc = await fixtureApp(dir, 'bomb-src');
  await writeFile(join(bombSrc, 'zeros.bin'), Buffer.alloc(20 * 1024 * 1024));
  const bomb = join(dir, 'bomb.tar.gz');
  execFileSync('tar', ['-czf', bomb, '-C', bombSrc, '.']);
  assert.ok((await stat(bomb)).size < 200 * 1024);
  const manySrc = await fixtureApp(dir, 'many-src');
  await mkdir(join(manySrc, 'many'));
  for (let i = 0; i < 100; i++) await writeFile(join(manySrc, 'many', `f${i}`), '');
  const many = join(dir, 'many.tar.gz');
  execFileSync('tar', ['-czf', many, '-C', manySrc, '.']);

  for (const [archive, limit] of [
    [bomb, /holds more than 1 MiB: over the limit max_release_size \(1048576 bytes\)/],
    [many, /holds more than 60 files and directories: over the limit max_release_files \(60\)/],
  ] as const) {
    const out = await runCli(['deploy', 'shop', archive, '--socket', socket]);
    assert.equal(out.code, 1, out.stdout + out.stderr);
    assert.match(out.stderr, /^failed at step prepare: /m);
    assert.match(out.stderr, limit);
    assert.equal((await http({ port }, { path: '/' })).json().release, serving, 'the old release still serves');
    const left = (await readdir(join(dir, 'state', 'apps', 'shop', 'releases'))).filter((n) => n !== serving);
    assert.deepEqual(left, [], 'no partial release is left');
  }
  // Within the limits a deploy still goes through.
  const ok = await runCli(['deploy', 'shop', await fixtureApp(dir, 'v2'), '--socket', socket]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.notEqual((await http({ port }, { path: '/' })).json().release, serving);
});
