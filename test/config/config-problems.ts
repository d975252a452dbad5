/** What the validate tests share: a context for normaliseConfig, and the problems it reports for a config. */
import assert from 'node:assert/strict';
import { normaliseConfig } from '../../src/config/validate.ts';
import { ConfigError } from '../../src/lib/errors.ts';

// normaliseConfig is pure: the file is never read, only its directory is used to resolve paths.
export const CTX = { file: '/srv/site/berth.yaml', environment: null };

/** Every problem normaliseConfig reports for `raw`, as `path: message` lines. */
export function problems(raw: unknown): string[] {
  try {
    normaliseConfig(raw, CTX);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.equal(err.code, 'BERTH_E_CONFIG');
    return err.problems.map((p) => (p.path ? `${p.path}: ${p.message}` : p.message));
  }
  assert.fail('expected the config to be rejected');
}
