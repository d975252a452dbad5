/**
 * The config reload plan on its own: two configs in, the problems and each app's action out. No
 * gateway, no processes, no files: the plan is pure (src/gateway/reload-plan.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normaliseConfig } from '../../src/config/validate.ts';
import { planReload, reloadSummary, RESTART_ONLY_KEYS } from '../../src/gateway/reload-plan.ts';

const WEB = { web: { command: 'node server.mjs' } };

function config(raw: Record<string, unknown>) {
  return normaliseConfig({ state_dir: '/var/lib/berth-test', listen: ['127.0.0.1:0'], ...raw }, { file: '/etc/berth.yaml', environment: null });
}

const base = {
  apps: {
    shop: { hosts: ['shop.test'], processes: WEB, reload_trigger: 'restart.txt' },
    blog: { hosts: ['blog.test'], processes: WEB },
    wiki: { hosts: ['wiki.test'], processes: WEB },
  },
};

test('the same config plans nothing: every app unchanged, no problem', () => {
  const plan = planReload(config(base), config(base));
  assert.deepEqual(plan, { problems: [], added: [], removed: [], reloaded: [], updated: [], unchanged: ['shop', 'blog', 'wiki'], retrigger: [] });
});

test('each app gets one action: added, removed, reloaded (process keys), updated (live keys) or unchanged', () => {
  const next = config({
    apps: {
      // A process key changed: a zero-downtime reload.
      shop: { hosts: ['shop.test'], processes: WEB, reload_trigger: 'restart.txt', env: { FEATURE: 'on' } },
      // Only hosts changed: applied with the routing table.
      blog: { hosts: ['blog.test', 'www.blog.test'], processes: WEB },
      docs: { hosts: ['docs.test'], processes: WEB },
    },
  });
  const plan = planReload(config(base), next);
  assert.deepEqual(plan.problems, []);
  assert.deepEqual(plan.reloaded, ['shop']);
  assert.deepEqual(plan.updated, ['blog']);
  assert.deepEqual(plan.added, ['docs']);
  assert.deepEqual(plan.removed, ['wiki']);
  assert.deepEqual(plan.unchanged, []);
  // Watchers are replaced for apps that come and go; shop kept its trigger file.
  assert.deepEqual(plan.retrigger.sort(), ['docs', 'wiki']);
});

test('every process key reloads the app; a renamed trigger file replaces its watcher without a reload', () => {
  const changes: Record<string, Record<string, unknown>> = {
    processes: { processes: { web: { command: 'node server.mjs --workers 2' } } },
    instances: { processes: { web: { command: 'node server.mjs', instances: 3 } } },
    env: { env: { A: '1' } },
    health: { health: { path: '/up' } },
  };
  for (const [key, change] of Object.entries(changes)) {
    const next = config({ apps: { ...base.apps, blog: { ...base.apps.blog, ...change } } });
    const plan = planReload(config(base), next);
    assert.deepEqual(plan.reloaded, ['blog'], key);
    assert.deepEqual(plan.updated, [], key);
  }
  const renamed = config({ apps: { ...base.apps, shop: { ...base.apps.shop, reload_trigger: 'go.txt' } } });
  const plan = planReload(config(base), renamed);
  assert.deepEqual(plan.reloaded, []);
  assert.deepEqual(plan.updated, ['shop']);
  assert.deepEqual(plan.retrigger, ['shop']);
});

test('restart-only keys are problems, each named with what runs and what the file says', () => {
  const next = config({ ...base, state_dir: '/var/lib/elsewhere', listen: ['127.0.0.1:8080'], control: { socket: '/run/other.sock' } });
  const plan = planReload(config(base), next);
  assert.deepEqual(plan.problems.map((p) => p.path).sort(), ['control.socket', 'listen', 'state_dir']);
  const listen = plan.problems.find((p) => p.path === 'listen')!;
  assert.match(listen.message, /needs a restart of the gateway \(running with \["127\.0\.0\.1:0"\], the file now says \["127\.0\.0\.1:8080"\]\)/);
  // The plan still says what it would do: the caller refuses it as a whole.
  assert.deepEqual(plan.unchanged, ['shop', 'blog', 'wiki']);
  assert.ok(RESTART_ONLY_KEYS.some((k) => k.path === 'database'));
});

test('the summary names every action, or says no app changed', () => {
  assert.equal(reloadSummary({ added: [], removed: [], updated: [], reloaded: [] }), 'no app changed');
  assert.equal(
    reloadSummary({ added: ['docs'], removed: ['wiki'], updated: ['blog'], reloaded: [{ app: 'shop', deploy: 'd1' }, { app: 'api', deploy: null }] }),
    'reloaded shop (d1), api; added docs; removed wiki; updated blog',
  );
});

test('a changed database URL or pool is a restart-only problem, and the message never shows a password', () => {
  const was = config({ ...base, database: 'postgres://berth:old-secret@db.test:5432/berth' });
  const next = config({ ...base, database: 'postgres://berth:new-secret@db2.test:5432/berth', database_pool: 8 });
  const plan = planReload(was, next);
  assert.deepEqual(plan.problems.map((p) => p.path).sort(), ['database', 'database_pool']);
  const text = JSON.stringify(plan.problems);
  assert.doesNotMatch(text, /secret/);
  assert.match(text, /db2\.test/);
  assert.match(plan.problems.find((p) => p.path === 'database_pool')!.message, /running with 4, the file now says 8/);
});
