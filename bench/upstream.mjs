// The benchmark's upstream: the smallest useful HTTP app, so the numbers measure the proxy in front of it.
// Listens on 127.0.0.1:$PORT (0: any free port) and writes the bound port to $BENCH_PORT_FILE.
import { createServer } from 'node:http';
import { writeFileSync, renameSync } from 'node:fs';

const BODY = Buffer.from('hello from the berth bench upstream\n');
const HEADERS = { 'content-type': 'text/plain', 'content-length': BODY.length };
// GET /64k: a 64 KiB response, for the bench's large-response scenario.
const LARGE = Buffer.alloc(64 * 1024, 'berth bench 64k body\n');
const LARGE_HEADERS = { 'content-type': 'text/plain', 'content-length': LARGE.length };
const parent = process.ppid;

const server = createServer((req, res) => {
  if (req.method === 'POST') {
    // An upload: answered once read whole, with the byte count, so a truncated body shows.
    let bytes = 0;
    req.on('data', (c) => (bytes += c.length));
    req.on('end', () => {
      const text = `${bytes}\n`;
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': text.length });
      res.end(text);
    });
    return;
  }
  // Drain any request body so keep-alive connections stay usable.
  req.resume();
  if (req.url === '/64k') {
    res.writeHead(200, LARGE_HEADERS);
    res.end(LARGE);
    return;
  }
  res.writeHead(200, HEADERS);
  res.end(BODY);
});
server.keepAliveTimeout = 60_000;

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  const file = process.env.BENCH_PORT_FILE;
  if (file) {
    // Write then rename, so the bench never reads a half-written port.
    writeFileSync(`${file}.${process.pid}.tmp`, String(port));
    renameSync(`${file}.${process.pid}.tmp`, file);
  }
});

function stop() {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => process.exit(0), 2_000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

// If whatever started us is killed outright, do not linger as an orphan holding a port.
setInterval(() => {
  if (process.ppid !== parent) stop();
}, 1_000).unref();
