/**
 * The house rules on imports, checked over src/: lib/ is a leaf that imports nothing from the rest of
 * src/, and no file reaches itself through its imports (issue #11), type-only imports included: the API
 * names the gateway through src/api/control.ts and its JSON through src/api/wire.ts, never gateway.ts.
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

test('the CLI and the control API never import the gateway: they name it through control.ts and wire.ts', () => {
  const gateway = [join(SRC, 'gateway.ts'), join(SRC, 'gateway') + '/'];
  const reaching: string[] = [];
  for (const [file, deps] of importGraph()) {
    const rel = relative(SRC, file);
    if (!rel.startsWith('cli/') && !rel.startsWith('api/')) continue;
    for (const dep of deps) if (gateway.some((g) => dep === g || dep.startsWith(g))) reaching.push(`${rel} imports ${relative(SRC, dep)}`);
  }
  assert.deepEqual(reaching, []);
});

test('src/ has no import circles', () => {
  const graph = importGraph();
  const circles: string[] = [];
  // Depth-first search with three colours: a back edge to a file still on the stack closes a circle.
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (file: string): void => {
    state.set(file, 'open');
    stack.push(file);
    for (const dep of graph.get(file) ?? []) {
      const seen = state.get(dep);
      if (seen === 'open') circles.push([...stack.slice(stack.indexOf(dep)), dep].map((f) => relative(SRC, f)).join(' -> '));
      else if (seen === undefined && graph.has(dep)) visit(dep);
    }
    stack.pop();
    state.set(file, 'done');
  };
  for (const file of [...graph.keys()].sort()) if (!state.has(file)) visit(file);
  assert.deepEqual(circles, []);
});
