#!/usr/bin/env node
// The installed `berth` command: checks the runtime, then hands over to berth's entry point.
// Plain JavaScript on purpose: an older Node must be able to parse this file to print the message.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const [major] = process.versions.node.split('.').map(Number);
if (!(major >= 24)) {
  process.stderr.write(`berth: Node.js 24 or later is required; ${process.execPath} is ${process.version}\n`);
  process.exit(1);
}

// An installed package (npm install -g of a tarball from `npm pack`) runs its build, dist/main.js: Node
// strips no TypeScript types under node_modules/. A checkout (or a copy of one, as the Dockerfile makes)
// runs src/main.ts directly, as `npm start` and the tests do, even when `npm pack` left a dist/ behind.
const root = new URL('..', import.meta.url);
const built = new URL('dist/main.js', root);
const sources = new URL('src/main.ts', root);
const installed = fileURLToPath(root).split('/').includes('node_modules');
const entry = existsSync(built) && (installed || !existsSync(sources)) ? built : sources;
if (!existsSync(entry)) {
  process.stderr.write(`berth: ${fileURLToPath(root)} has neither dist/main.js nor src/main.ts; install berth from a tarball made by npm pack\n`);
  process.exit(1);
}
try {
  await import(entry.href);
} catch (err) {
  // A package packed without its build (npm pack --ignore-scripts) ships sources Node will not run here.
  if (err && err.code === 'ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING') {
    process.stderr.write(`berth: cannot run the TypeScript sources from inside node_modules (Node does not strip types there): ${fileURLToPath(root)} has no dist/; install a tarball made by npm pack, which builds it\n`);
    process.exit(1);
  }
  throw err;
}
