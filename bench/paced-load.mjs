// An open-loop load generator for one latency figure: GET <path> at a fixed overall rate over keep-alive
// connections to 127.0.0.1:<port>, for <seconds> after one second of warm-up. A 1 ms timer releases the requests that came due, so
// each is timed from when it was written (a timer's lateness is not the proxy's). A request that came
// due while every connection was busy waits for one, and that wait counts in its latency; `lateStarts`
// says how many did, and a figure with many is not a half-load figure. Prints one JSON line:
// { sent, ok, errors, p50Ms, p99Ms, maxMs, lateStarts }.
//
// Usage: node bench/paced-load.mjs <port> <rate per second> <seconds> [connections] [path]
// The responses are read by Content-Length (the bench upstream always sends one).
import { connect } from 'node:net';

const [port, rate, seconds, connections = 64, path = '/'] = process.argv.slice(2).map((v, i) => (i < 4 ? Number(v) : v));
if (!(port > 0 && rate > 0 && seconds > 0 && connections > 0)) {
  process.stderr.write('usage: node bench/paced-load.mjs <port> <rate> <seconds> [connections] [path]\n');
  process.exit(2);
}
const REQUEST = Buffer.from(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
const latencies = [];
let sent = 0;
let ok = 0;
let errors = 0;
/** Requests that came due while every connection was busy: they waited for one (and that wait counts). */
let lateStarts = 0;
const backlog = [];
const idle = [];

function open() {
  const socket = connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  const conn = { socket, due: 0, buf: Buffer.alloc(0), alive: true };
  socket.on('connect', () => release(conn));
  socket.on('data', (chunk) => {
    conn.buf = conn.buf.length === 0 ? chunk : Buffer.concat([conn.buf, chunk]);
    const end = conn.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = conn.buf.subarray(0, end).toString('latin1');
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    const total = end + 4 + (m ? Number(m[1]) : 0);
    if (conn.buf.length < total) return;
    const status = Number(head.slice(9, 12));
    conn.buf = conn.buf.subarray(total);
    const now = performance.now();
    // The first second warms up (JIT, connection pools) and is not recorded.
    if (now >= recordFrom) {
      latencies.push(now - conn.due);
      if (status >= 200 && status < 300) ok++;
      else errors++;
    }
    release(conn);
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    if (conn.due !== 0) errors++;
    conn.alive = false;
    if (running) setTimeout(open, 10);
  });
}

function release(conn) {
  conn.due = 0;
  const next = backlog.shift();
  if (next !== undefined) send(conn, next);
  else idle.push(conn);
}

function send(conn, due) {
  conn.due = due;
  if (due >= recordFrom) sent++;
  // On time: timed from now. A backlogged request: from when it came due, its wait included.
  const now = performance.now();
  if (now - due < intervalMs + 1) conn.due = now;
  conn.socket.write(REQUEST);
}

let running = true;
for (let i = 0; i < connections; i++) open();
const intervalMs = 1000 / rate;
const start = performance.now() + 200;
const recordFrom = start + 1000;
let issued = 0;
const end = recordFrom + seconds * 1000;
function tick() {
  const now = performance.now();
  while (running && start + issued * intervalMs <= now) {
    const due = start + issued * intervalMs;
    issued++;
    let conn = idle.pop();
    while (conn !== undefined && !conn.alive) conn = idle.pop();
    if (conn === undefined) {
      if (due >= recordFrom) lateStarts++;
      backlog.push(due);
    } else send(conn, due);
  }
  if (now >= end) {
    running = false;
    setTimeout(report, 1000);
    return;
  }
  setTimeout(tick, 1);
}
setTimeout(tick, 200);

function report() {
  const sorted = Float64Array.from(latencies).sort();
  const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0);
  const round = (n) => Math.round(n * 1000) / 1000;
  process.stdout.write(JSON.stringify({ sent, ok, errors: errors + backlog.length, p50Ms: round(at(0.5)), p99Ms: round(at(0.99)), maxMs: round(sorted.length ? sorted[sorted.length - 1] : 0), lateStarts }) + '\n');
  process.exit(0);
}
