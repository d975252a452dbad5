// A test app that can saturate itself: a plain node:http server on $PORT or $BERTH_SOCKET.
//
//   GET /up            200 while the event loop is free (it cannot answer during a /block)
//   GET /block?ms=N    holds the event loop for N ms, then answers: in Atomics.wait by default (a synchronous
//                      call waiting on a database: the loop is stuck, the CPU is free), or in a busy loop
//                      with &how=spin (the loop is stuck and the CPU is burnt)
//   GET /sleep?ms=N    answers after N ms without blocking (a slow but free app)
//   GET /stats         { pid, instance, inFlight, maxInFlight, served }: its own count of the requests it
//                      held at once (received and not yet answered)
//
// With BLOCKING_APP_REPORT=<unix socket path>, every answered request is also reported there as a line
// `<pid> <release> <start> <end>`, times in CLOCK_MONOTONIC nanoseconds (process.hrtime.bigint(), one
// clock for every process of the machine), so a test can count the requests in flight across instances
// and generations exactly.
import { createServer } from 'node:http';
import { connect } from 'node:net';

const MAX_MS = 60_000;
let inFlight = 0;
let maxInFlight = 0;
let served = 0;

let report = null;
if (process.env.BLOCKING_APP_REPORT) {
  report = connect(process.env.BLOCKING_APP_REPORT);
  // The collector going away must not take the app down with it.
  report.on('error', () => {
    report = null;
  });
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Ends a counted request: the count drops before the answer leaves, so no later request can overlap it. */
function finish(res, start, body) {
  inFlight--;
  served++;
  const end = process.hrtime.bigint();
  if (report !== null) report.write(`${process.pid} ${process.env.BERTH_RELEASE ?? '-'} ${start} ${end}\n`);
  reply(res, 200, body);
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Holds the event loop for `ms`: nothing else in this process runs meanwhile, /up included. */
function holdLoop(ms, how) {
  if (how === 'spin') busyLoop(ms);
  else Atomics.wait(sleeper, 0, 0, ms);
}

function busyLoop(ms) {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // Spin: nothing else in this process runs meanwhile, /up included.
  }
}

function duration(url) {
  const ms = Number(url.searchParams.get('ms') ?? 1000);
  return Number.isFinite(ms) && ms >= 0 ? Math.min(ms, MAX_MS) : 1000;
}

/**
 * Blocks run one at a time, and each is answered `SETTLE_MS` after its spin. Meanwhile the loop accepts
 * the connections that came during the spin and reads their requests: they are counted while the one
 * that blocked them is still held, so inFlight is what the app really holds. Answering right after the
 * spin would drop the count first, and a blocked app would never see more than one. Nobody can send the
 * next request before the answer, so nothing is counted that the app did not hold.
 */
const SETTLE_MS = 10;
const blocks = [];
let spinning = false;

function spinSoon() {
  if (spinning || blocks.length === 0) return;
  spinning = true;
  setImmediate(spin);
}

function spin() {
  const job = blocks.shift();
  holdLoop(job.ms, job.how);
  setTimeout(answer, SETTLE_MS, job);
}

function answer(job) {
  finish(job.res, job.start, job.body);
  spinning = false;
  spinSoon();
}

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/up') return reply(res, 200, { ok: true });
  if (url.pathname === '/stats') {
    return reply(res, 200, { pid: process.pid, instance: process.env.BERTH_INSTANCE, inFlight, maxInFlight, served });
  }
  if (url.pathname !== '/block' && url.pathname !== '/sleep') return reply(res, 404, { error: 'not found' });
  const start = process.hrtime.bigint();
  inFlight++;
  if (inFlight > maxInFlight) maxInFlight = inFlight;
  const ms = duration(url);
  const body = { pid: process.pid, instance: process.env.BERTH_INSTANCE, release: process.env.BERTH_RELEASE, ms };
  if (url.pathname === '/sleep') {
    setTimeout(finish, ms, res, start, body);
    return;
  }
  blocks.push({ res, start, body, ms, how: url.searchParams.get('how') === 'spin' ? 'spin' : 'wait' });
  spinSoon();
});

if (process.env.BERTH_SOCKET) server.listen(process.env.BERTH_SOCKET);
else server.listen(Number(process.env.PORT), '127.0.0.1');

process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
