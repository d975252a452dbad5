import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { LoggerFactory, PrettyStream } from '../../src/lib/logger.ts';

class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString('utf8');
    cb();
  }
}

test('each logger takes its level from log_levels, falling back to root', () => {
  const sink = new Sink();
  const f = new LoggerFactory({ root: 'warn', proxy: 'info' }, sink);
  f.get('proxy').info({ app: 'shop' }, 'request');
  f.get('deploy').info({}, 'hidden');
  f.get('deploy').warn({}, 'shown');
  const lines = sink.text.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => [l.logger, l.msg]), [['proxy', 'request'], ['deploy', 'shown']]);
  f.setLevels({ root: 'info' });
  f.get('deploy').info({}, 'now shown');
  f.get('proxy').debug({}, 'still hidden');
  assert.match(sink.text, /now shown/);
  assert.doesNotMatch(sink.text, /still hidden/);
});

test('the terminal format is one readable line per entry with its fields', async () => {
  const out = new Sink();
  const pretty = new PrettyStream(out);
  pretty.write(JSON.stringify({ level: 40, time: '2026-11-22T05:19:37.349Z', pid: 1, logger: 'deploy', msg: 'deploy failed', step: 'build', err: 'exit 1: npm ci' }) + '\nnot json\n');
  await new Promise((r) => setImmediate(r));
  assert.equal(out.text, '05:19:37.349 WARN  deploy: deploy failed step=build err="exit 1: npm ci"\nnot json\n');
});
