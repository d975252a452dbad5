// The app behind bench/slow-clients.ts and test/proxy/slow-clients.test.ts: a plain node:http server on
// $PORT (or $BERTH_SOCKET) that counts what it is doing, so the bench can see its slots free up.
//   GET /up            200 (health)
//   GET /              small JSON with the app's own counters
//   GET /big?bytes=N   N bytes with a Content-Length, written with back-pressure (the non-reading clients)
//   POST /upload       reads the body, answers its length (the slow-body clients)
//   GET /ws            a WebSocket that answers the handshake and then stays silent (the idle ones)
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';

const counters = { inFlight: 0, peak: 0, bigStarted: 0, bigDone: 0, uploads: 0, websockets: 0 };
const CHUNK = Buffer.alloc(64 * 1024, 120);

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  // Health probes come from the supervisor straight to the app, outside the admission slots: not counted.
  if (url.pathname === '/up') return res.end('ok');
  counters.inFlight++;
  counters.peak = Math.max(counters.peak, counters.inFlight);
  // Done at 'finish' (the last byte handed to the socket), or 'close' when the client left first. Not
  // 'close' alone: on a keep-alive connection it is emitted a tick after 'finish', after node may
  // already have parsed the next request on that connection, which would count one request twice.
  let done = false;
  const end = () => {
    if (done) return;
    done = true;
    counters.inFlight--;
  };
  res.on('finish', end);
  res.on('close', end);
  if (url.pathname === '/big') {
    const bytes = Math.min(Number(url.searchParams.get('bytes') ?? 8 * 1024 * 1024), 1024 * 1024 * 1024);
    counters.bigStarted++;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes) });
    let left = bytes;
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length);
        left -= n;
        if (!res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) return void res.once('drain', pump);
      }
      res.end(() => counters.bigDone++);
    };
    pump();
    return;
  }
  if (url.pathname === '/upload') {
    let length = 0;
    req.on('data', (c) => (length += c.length));
    req.on('end', () => {
      counters.uploads++;
      res.end(JSON.stringify({ length }));
    });
    return;
  }
  const text = JSON.stringify({ ...counters, pid: process.pid });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
});

server.on('upgrade', (req, socket) => {
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string') return void socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n');
  const accept = createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`);
  counters.websockets++;
  socket.on('error', () => socket.destroy());
  socket.on('close', () => counters.websockets--);
  socket.resume();
});

if (process.env.BERTH_SOCKET) server.listen(process.env.BERTH_SOCKET);
else server.listen(Number(process.env.PORT), '127.0.0.1');

process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
});
