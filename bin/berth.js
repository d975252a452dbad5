#!/usr/bin/env node
// The installed `berth` command. Node 24 runs the TypeScript sources directly (type stripping),
// so this shim only checks the runtime and hands over to src/main.ts.
const [major] = process.versions.node.split('.').map(Number);
if (major < 24) {
  process.stderr.write(`berth: Node.js >= 24 is required, this is ${process.version}\n`);
  process.exit(2);
}
await import('../src/main.ts');
