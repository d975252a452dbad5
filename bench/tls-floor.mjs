// Node's own ceiling for the TLS bench (bench/proxy-tls.ts --node-floor): a listener made the way berth's
// are (http2.createSecureServer with allowHTTP1, TLS 1.2 and 1.3) that answers every request itself with
// the upstream's body, proxying nothing. Whatever berth does beyond this is the cost of proxying.
// Usage: node bench/tls-floor.mjs CERT KEY PORTFILE (listens on 127.0.0.1, any free port).
import { createSecureServer } from 'node:http2';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';

const [certificate, key, portFile] = process.argv.slice(2);
const BODY = Buffer.from('hello from the berth bench upstream\n');
const HEADERS = { 'content-type': 'text/plain', 'content-length': BODY.length };
const parent = process.ppid;

const server = createSecureServer({ cert: readFileSync(certificate), key: readFileSync(key), allowHTTP1: true, minVersion: 'TLSv1.2' }, (req, res) => {
  req.resume();
  res.writeHead(200, HEADERS);
  res.end(BODY);
});
server.listen(0, '127.0.0.1', () => {
  writeFileSync(`${portFile}.tmp`, String(server.address().port));
  renameSync(`${portFile}.tmp`, portFile);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
// Not an orphan holding a port if the bench is killed outright.
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 1_000).unref();
