// The berth demo app: a dependency-free Node web app (Node >= 20) with a hand-written WebSocket echo.
// It listens on $BERTH_SOCKET when set, else on 127.0.0.1:$PORT, as berth's supervisor asks.
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';

const SLOW_MAX_MS = 60_000;
/** A stuck client must not keep a stopping instance alive forever; berth's SIGKILL comes later anyway. */
const SHUTDOWN_DEADLINE_MS = SLOW_MAX_MS + 5_000;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Largest WebSocket message (after reassembling fragments) the echo accepts; bigger closes with 1009. */
const WS_MAX_MESSAGE = 1024 * 1024;
const WS_CLOSE_GRACE_MS = 2_000;

const env = process.env;
const info = {
  app: env.BERTH_APP ?? null,
  release: env.BERTH_RELEASE ?? null,
  process: env.BERTH_PROCESS ?? null,
  instance: env.BERTH_INSTANCE === undefined ? null : Number(env.BERTH_INSTANCE),
  pid: process.pid,
};

let inFlight = 0;
let stopping = false;
const sockets = new Set();

const server = createServer(onRequest);
server.on('upgrade', onUpgrade);

function send(res, status, type, body, extra) {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), ...extra });
  res.end(body);
}

function sendJson(res, status, value, extra) {
  send(res, status, 'application/json', JSON.stringify(value), extra);
}

function onRequest(req, res) {
  inFlight++;
  res.once('close', onResponseClose);
  const url = new URL(req.url, 'http://app');
  const route = `${req.method} ${url.pathname}`;
  switch (route) {
    case 'GET /':
    case 'HEAD /':
      // inFlight excludes this request: it lets a caller see that a slow request is being served.
      return sendJson(res, 200, { ...info, inFlight: inFlight - 1 });
    case 'GET /up':
    case 'HEAD /up':
      return send(res, 200, 'text/plain', 'ok');
    case 'GET /slow':
      return slow(res, url.searchParams.get('ms'));
    case 'POST /echo':
      res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/octet-stream' });
      req.pipe(res);
      return;
  }
  if (url.pathname === '/' || url.pathname === '/up' || url.pathname === '/slow' || url.pathname === '/echo') {
    return sendJson(res, 405, { error: 'method not allowed' }, { allow: url.pathname === '/echo' ? 'POST' : 'GET, HEAD' });
  }
  // Deliberately no /env or similar: an app's environment holds secrets.
  sendJson(res, 404, { error: 'not found', path: url.pathname });
}

function onResponseClose() {
  inFlight--;
  // Keep-alive connections become idle only after their response; close them so a stop can finish.
  if (stopping) server.closeIdleConnections();
}

function slow(res, raw) {
  if (raw !== null && !/^\d{1,9}$/.test(raw)) return sendJson(res, 400, { error: 'ms must be a non-negative integer' });
  const slept = Math.min(raw === null ? 1000 : Number(raw), SLOW_MAX_MS);
  const timer = setTimeout(() => sendJson(res, 200, { slept, pid: process.pid }), slept);
  res.once('close', () => clearTimeout(timer));
}

// ---- WebSocket echo (RFC 6455), by hand so the demo has no dependencies ---------------------------

function rejectUpgrade(socket, status, reason, extra = '') {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nconnection: close\r\ncontent-length: 0\r\n${extra}\r\n`);
}

function onUpgrade(req, socket, head) {
  const url = new URL(req.url, 'http://app');
  if (url.pathname !== '/ws') return rejectUpgrade(socket, 404, 'Not Found');
  const key = req.headers['sec-websocket-key'];
  const valid =
    req.method === 'GET' &&
    String(req.headers.upgrade).toLowerCase() === 'websocket' &&
    typeof key === 'string' &&
    Buffer.from(key, 'base64').length === 16;
  if (!valid) return rejectUpgrade(socket, 400, 'Bad Request');
  if (req.headers['sec-websocket-version'] !== '13') {
    return rejectUpgrade(socket, 426, 'Upgrade Required', 'sec-websocket-version: 13\r\n');
  }
  if (stopping) return rejectUpgrade(socket, 503, 'Service Unavailable');
  const accept = createHash('sha1').update(key + WS_GUID).digest('base64');
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n' +
      `sec-websocket-accept: ${accept}\r\n\r\n`,
  );
  socket.setNoDelay(true);
  new WsConnection(socket, head);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

class WsConnection {
  constructor(socket, head) {
    this.socket = socket;
    this.buffer = head.length > 0 ? Buffer.from(head) : Buffer.alloc(0);
    /** Opcode and parts of a fragmented message being reassembled; null when none is open. */
    this.messageOpcode = null;
    this.parts = [];
    this.partsLength = 0;
    this.closing = false;
    this.closeSent = false;
    this.closeTimer = null;
    sockets.add(this);
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('close', () => this.onClose());
    socket.on('error', () => socket.destroy());
    if (this.buffer.length > 0) this.parse();
  }

  onData(chunk) {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    this.parse();
  }

  onClose() {
    clearTimeout(this.closeTimer);
    sockets.delete(this);
  }

  parse() {
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0;
      const rsv = b[0] & 0x70;
      const opcode = b[0] & 0x0f;
      const masked = (b[1] & 0x80) !== 0;
      let length = b[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (b.length < 4) return;
        length = b.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (b.length < 10) return;
        const big = b.readBigUInt64BE(2);
        if (big > BigInt(WS_MAX_MESSAGE)) return this.fail(1009, 'message too big');
        length = Number(big);
        offset = 10;
      }
      // Clients must mask (RFC 6455 § 5.1) and may not use extensions we did not negotiate.
      if (!masked || rsv !== 0) return this.fail(1002, 'protocol error');
      if (opcode >= 0x8 && (!fin || length > 125)) return this.fail(1002, 'bad control frame');
      if (length > WS_MAX_MESSAGE) return this.fail(1009, 'message too big');
      if (b.length < offset + 4 + length) return;
      const mask = b.subarray(offset, offset + 4);
      const payload = Buffer.from(b.subarray(offset + 4, offset + 4 + length));
      for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      this.buffer = b.subarray(offset + 4 + length);
      if (!this.onFrame(fin, opcode, payload)) return;
    }
  }

  /** Handles one frame; returns false when the connection is done reading. */
  onFrame(fin, opcode, payload) {
    switch (opcode) {
      case 0x0: // continuation
        if (this.messageOpcode === null) return this.fail(1002, 'unexpected continuation');
        return this.addPart(fin, payload);
      case 0x1:
      case 0x2:
        if (this.messageOpcode !== null) return this.fail(1002, 'expected continuation');
        this.messageOpcode = opcode;
        return this.addPart(fin, payload);
      case 0x8:
        return this.onCloseFrame(payload);
      case 0x9:
        this.writeFrame(0xa, payload);
        return true;
      case 0xa:
        return true;
      default:
        return this.fail(1002, 'unknown opcode');
    }
  }

  addPart(fin, payload) {
    this.partsLength += payload.length;
    if (this.partsLength > WS_MAX_MESSAGE) return this.fail(1009, 'message too big');
    this.parts.push(payload);
    if (!fin) return true;
    const message = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
    const opcode = this.messageOpcode;
    this.messageOpcode = null;
    this.parts = [];
    this.partsLength = 0;
    if (opcode === 0x1) {
      try {
        utf8.decode(message);
      } catch {
        return this.fail(1007, 'invalid utf-8');
      }
    }
    this.writeFrame(opcode, message);
    return true;
  }

  onCloseFrame(payload) {
    if (payload.length === 1) return this.fail(1002, 'bad close frame');
    let code = 1000;
    if (payload.length >= 2) {
      code = payload.readUInt16BE(0);
      const allowed = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) || (code >= 3000 && code <= 4999);
      if (!allowed) return this.fail(1002, 'bad close code');
    }
    // Echo the peer's code: this completes the close handshake it started (or answers ours).
    if (!this.closing) this.close(code, '');
    this.socket.end();
    return false;
  }

  /** Starts the close handshake; the peer's close frame (or the grace timer) ends the TCP connection. */
  close(code, reason) {
    if (this.closing) return;
    this.closing = true;
    const body = Buffer.alloc(2 + Buffer.byteLength(reason));
    body.writeUInt16BE(code, 0);
    body.write(reason, 2);
    this.writeFrame(0x8, body);
    this.closeTimer = setTimeout(() => this.socket.destroy(), WS_CLOSE_GRACE_MS);
    this.closeTimer.unref();
  }

  fail(code, reason) {
    this.close(code, reason);
    this.socket.end();
    return false;
  }

  writeFrame(opcode, payload) {
    // Once our close frame is out, RFC 6455 § 5.5.1 allows no further frames from us.
    if (!this.socket.writable || (this.closing && opcode !== 0x8) || this.closeSent) return;
    if (opcode === 0x8) this.closeSent = true;
    let header;
    if (payload.length < 126) {
      header = Buffer.from([0x80 | opcode, payload.length]);
    } else if (payload.length < 65_536) {
      header = Buffer.alloc(4);
      header[0] = 0x80 | opcode;
      header[1] = 126;
      header.writeUInt16BE(payload.length, 2);
    } else {
      header = Buffer.alloc(10);
      header[0] = 0x80 | opcode;
      header[1] = 127;
      header.writeBigUInt64BE(BigInt(payload.length), 2);
    }
    this.socket.cork();
    this.socket.write(header);
    this.socket.write(payload);
    this.socket.uncork();
  }
}

// ---- lifecycle --------------------------------------------------------------------------------

function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.log(JSON.stringify({ msg: 'stopping', signal, inFlight, websockets: sockets.size }));
  // Stop accepting; requests in flight finish, then server.close's callback runs.
  server.close(() => {
    console.log(JSON.stringify({ msg: 'stopped' }));
    process.exit(0);
  });
  server.closeIdleConnections();
  for (const ws of sockets) ws.close(1001, 'going away');
  setTimeout(() => {
    console.error(JSON.stringify({ msg: 'stop deadline passed', inFlight }));
    process.exit(1);
  }, SHUTDOWN_DEADLINE_MS).unref();
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.on('listening', () => {
  const addr = server.address();
  console.log(JSON.stringify({ msg: 'listening', address: typeof addr === 'string' ? addr : `${addr.address}:${addr.port}`, ...info }));
});

if (env.BERTH_SOCKET) {
  server.listen(env.BERTH_SOCKET);
} else {
  const port = Number(env.PORT ?? 3000);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    console.error(JSON.stringify({ msg: 'PORT must be a port number', port: env.PORT }));
    process.exit(2);
  }
  server.listen(port, '127.0.0.1');
}
