/**
 * Issue #11, structure 3: one health rule. `berth status`, the control API's `/v1/ready` and
 * `/v1/apps/:app/health`, and the front door's `/_berth/ready` and `/_berth/apps/<app>/health` give
 * the same verdict for the same app, from one function (src/supervisor/app-health.ts). Before, status
 * counted crashed instances and boot errors while the front door did not: an app with one crashed
 * instance was UNHEALTHY in `berth status` and 200 on `/_berth/apps/<app>/health`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';

test('status, the control API and the front door agree on each app: healthy, one instance crashed, a worker crashed, boot failed', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    public_details: true,
    apps: {
      good: { source: src, hosts: ['good.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
      // Instance 1 exits at once, every time: it ends crashed while instance 0 serves.
      half: {
        source: src,
        hosts: ['half.test'],
        processes: { web: { command: `if [ "$BERTH_INSTANCE" = 1 ]; then exit 3; fi; exec ${FIXTURE_WEB_COMMAND}`, instances: 2 } },
      },
      // The web serves; the background worker exits at once, every time, and ends crashed.
      jobs: {
        source: src,
        hosts: ['jobs.test'],
        processes: { web: { command: FIXTURE_WEB_COMMAND }, worker: { command: 'exit 4', http: false } },
      },
      // No release and no source: it fails to boot.
      broken: { hosts: ['broken.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
    },
  });
  const { gateway, port } = await startGateway(t, file, {
    supervisorTiming: { backoffInitialMs: 10, backoffMaxMs: 40, resetAfterMs: 60_000, failureLimit: 3, failureWindowMs: 600_000 },
  });
  const socketPath = gateway.config.control.socket;
  const crashed = (app: string, process: string) => gateway.appStatus(app)?.generations.find((g) => g.active)?.instances.some((i) => i.process === process && i.state === 'crashed');
  await waitFor(
    () => crashed('half', 'web') && crashed('jobs', 'worker') && gateway.appStatus('broken')?.phase === 'failed' && gateway.appStatus('good')?.healthy,
    { timeoutMs: 30_000, message: 'half and jobs with a crashed instance, broken failed, good healthy' },
  );
  // half and jobs still serve: a crashed instance is not the only one of its pool.
  assert.equal((await http({ port }, { host: 'half.test', path: '/' })).status, 200);
  assert.equal((await http({ port }, { host: 'jobs.test', path: '/' })).status, 200);

  const status = await http({ socketPath }, { path: '/v1/status' });
  const byName = new Map<string, { healthy: boolean; reasons: string[]; error: string | null }>(status.json().apps.map((a: any) => [a.name, a]));
  assert.deepEqual(byName.get('good')!.reasons, []);
  assert.deepEqual(byName.get('half')!.reasons, ['web.1 crashed']);
  assert.deepEqual(byName.get('jobs')!.reasons, ['worker.0 crashed']);
  assert.match(byName.get('broken')!.reasons.join(), /^failed to boot: app broken has no release yet and no source/);

  const controlReady = (await http({ socketPath }, { path: '/v1/ready' })).json();
  const frontReady = await http({ port }, { path: '/_berth/ready' });
  assert.equal(frontReady.status, 503);
  const front = frontReady.json();
  for (const [name, s] of byName) {
    // The control API: the same verdict and the same reasons as status.
    const control = (await http({ socketPath }, { path: `/v1/apps/${name}/health` })).json();
    assert.equal(control.healthy, s.healthy, `${name}: /v1/apps/${name}/health`);
    assert.deepEqual(control.reasons, s.reasons, `${name}: /v1/apps/${name}/health`);
    assert.deepEqual(controlReady.apps[name].reasons, s.reasons, `${name}: /v1/ready`);
    // The front door: the same verdict; the same reasons, but a boot error's text stays on the control API.
    const publicReasons = s.error === null ? s.reasons : ['failed to boot'];
    const appHealth = await http({ port }, { path: `/_berth/apps/${name}/health` });
    assert.equal(appHealth.status, s.healthy ? 200 : 503, `${name}: /_berth/apps/${name}/health`);
    assert.deepEqual(appHealth.json().reasons, publicReasons, `${name}: /_berth/apps/${name}/health`);
    assert.deepEqual(front.apps[name].reasons, publicReasons, `${name}: /_berth/ready`);
  }
  assert.deepEqual(front.reasons.sort(), ['broken: failed to boot', 'half: web.1 crashed', 'jobs: worker.0 crashed']);
  // The details list every instance, the crashed background worker included.
  assert.deepEqual(front.apps.jobs.instances.map((i: any) => `${i.process}.${i.index} ${i.state}`), ['web.0 ready', 'worker.0 crashed']);
});
