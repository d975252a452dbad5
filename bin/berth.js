#!/usr/bin/env node
// The installed `berth` command. Node 24 runs the TypeScript sources directly (type stripping),
// so this shim only checks the runtime and hands over to src/main.ts.
// Plain JavaScript on purpose: an older Node must be able to parse this file to print the message.
const [major] = process.versions.node.split('.').map(Number);
if (!(major >= 24)) {
  process.stderr.write(`berth: Node.js 24 or later is required; ${process.execPath} is ${process.version}\n`);
  process.exit(1);
}
try {
  await import('../src/main.ts');
} catch (err) {
  // Node does not strip types under node_modules/, so `npm install -g berth-x.y.z.tgz` cannot run:
  // install from a directory outside node_modules (a checkout or unpacked tarball; see the Dockerfile).
  if (err && err.code === 'ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING') {
    process.stderr.write(`berth: cannot run from inside node_modules (Node does not strip TypeScript types there): ${new URL('..', import.meta.url).pathname}; install berth in a directory of its own and link bin/berth.js onto PATH\n`);
    process.exit(1);
  }
  throw err;
}
