import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatCheckReport } from '../../src/config/describe.ts';
import { normaliseConfig } from '../../src/config/validate.ts';

const CTX = { file: '/srv/site/berth.yaml', environment: 'production' };

test('the check report lists file, environment, listeners, routes and DB budgets', () => {
  const config = normaliseConfig(
    {
      listen: ['127.0.0.1:8080', 'unix:front.sock'],
      control: { listen: '127.0.0.1:9000' },
      apps: {
        shop: {
          hosts: ['shop.example.com'],
          db_connections: 600,
          processes: {
            web: { command: 'a', instances: 2, concurrency: 8 },
            ws: { command: 'b', instances: 1, concurrency: 500, http: true },
            worker: { command: 'c', instances: 3 },
          },
          routes: [{ path: '/socket.io', to: 'ws' }, { path: '/static', static: 'public' }, { path: '/', to: 'web' }],
        },
        blog: { processes: { web: { command: 'd' } } },
        jobs: { hosts: 'jobs.test', processes: { worker: { command: 'e' } }, db_connections: 5 },
        docs: { hosts: 'docs.test' },
      },
    },
    CTX,
  );
  const report = formatCheckReport(config);
  const lines = report.split('\n');
  assert.ok(lines.includes('config:      /srv/site/berth.yaml'));
  assert.ok(lines.includes('environment: production'));
  assert.ok(lines.includes('listen:      127.0.0.1:8080, unix:front.sock'));
  assert.ok(lines.includes('control:     /srv/site/.berth/control.sock, tcp 127.0.0.1:9000'));
  assert.ok(lines.includes('store:       sqlite (/srv/site/.berth/berth.db)'));
  const table = lines.slice(lines.indexOf('routes:') + 1, lines.indexOf('db budget:') - 1).map((l) => l.trim().split(/\s{2,}/));
  assert.deepEqual(table, [
    ['HOST', 'PATH', 'TARGET', 'APP'],
    ['shop.example.com', '/socket.io', 'ws', 'shop'],
    ['shop.example.com', '/static', 'static:public', 'shop'],
    ['shop.example.com', '/', 'web', 'shop'],
    ['(any host)', '/', 'web', 'blog'],
    ['docs.test', '/', 'web', 'docs'],
  ]);
  assert.deepEqual(lines.slice(lines.indexOf('db budget:') + 1), [
    '  shop: web 2x8 + ws 1x500 = 516 connections, budget 600',
    '  blog: web 1x8 = 8 connections, no db_connections budget set',
    '  jobs: no http pools = 0 connections, budget 5',
    '  docs: process types come from the Procfile (checked at deploy), no db_connections budget set',
  ]);
});

test('the check report of a config without apps, and never a database password', () => {
  const config = normaliseConfig({ database: 'postgres://berth:s3cret@db.internal:5432/berth' }, { ...CTX, environment: null });
  const report = formatCheckReport(config);
  assert.match(report, /^environment: \(none\)$/m);
  assert.match(report, /^store: {7}postgres \(db\.internal:5432\/berth\)$/m);
  assert.match(report, /^routes:\n {2}\(none\)$/m);
  assert.match(report, /^db budget:\n {2}\(no apps\)$/m);
  assert.ok(!report.includes('s3cret'));
});
