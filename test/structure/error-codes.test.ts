/**
 * Error codes come from one typed table (`ErrorCodes` in src/lib/errors.ts). A code written as a string
 * literal anywhere else in src/ could drift from the table (a typo is a new, undocumented code), so this
 * test fails on any quoted BERTH_E_* outside that file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

const SRC = join(import.meta.dirname, '..', '..', 'src');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sources(path);
    return e.name.endsWith('.ts') ? [path] : [];
  });
}

test('no error code is written as a string literal outside the ErrorCodes table', () => {
  const offenders: string[] = [];
  for (const file of sources(SRC)) {
    const rel = relative(SRC, file);
    if (rel === join('lib', 'errors.ts')) continue;
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (/['"`]BERTH_E_[A-Z_]*['"`]/.test(line)) offenders.push(`${rel}:${i + 1}: ${line.trim()}`);
      });
  }
  assert.deepEqual(offenders, [], `use ErrorCodes.<name> instead:\n${offenders.join('\n')}`);
});

test('the table holds BERTH_E_USAGE, and every code in it is distinct', async () => {
  const { ErrorCodes } = await import('../../src/lib/errors.ts');
  const codes = Object.values(ErrorCodes);
  assert.ok(codes.includes('BERTH_E_USAGE'));
  assert.equal(new Set(codes).size, codes.length);
});
