/**
 * The house rules on imports, checked over src/: lib/ is a leaf that imports nothing from the rest of
 * src/. (The no-circles check of issue #11 comes with the control-interface split: gateway.ts and api/
 * still import each other's types today.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const SRC = resolve(import.meta.dirname, '../../src');

/** Every .ts file under src/ -> the src/ files it imports (relative specifiers only). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const entry of readdirSync(SRC, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
    const file = join(entry.parentPath, entry.name);
    const text = readFileSync(file, 'utf8');
    const deps: string[] = [];
    for (const m of text.matchAll(/^\s*(?:import|export)\b[^'"]*?\bfrom\s+'(\.{1,2}\/[^']+)'/gm)) deps.push(resolve(dirname(file), m[1]));
    for (const m of text.matchAll(/\bimport\(\s*'(\.{1,2}\/[^']+)'\s*\)/g)) deps.push(resolve(dirname(file), m[1]));
    graph.set(file, deps);
  }
  return graph;
}

test('lib/ imports nothing from the rest of src/', () => {
  const lib = join(SRC, 'lib');
  const outside: string[] = [];
  const graph = importGraph();
  assert.ok(graph.size > 50, `read ${graph.size} files`);
  for (const [file, deps] of graph) {
    if (!file.startsWith(lib + '/')) continue;
    for (const dep of deps) if (!dep.startsWith(lib + '/')) outside.push(`${relative(SRC, file)} imports ${relative(SRC, dep)}`);
  }
  assert.deepEqual(outside, []);
});
