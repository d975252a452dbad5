"""The berth demo app in Python: standard library only (wsgiref), one thread per request.

It listens on 127.0.0.1:$PORT, as berth's supervisor asks, and stops cleanly on SIGTERM: it stops
accepting, lets requests in flight finish, then exits 0.
"""

import json
import os
import signal
import sys
import threading
import time
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

SLOW_MAX_MS = 60_000
ECHO_CHUNK = 64 * 1024

_lock = threading.Lock()
_in_flight = 0


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # A slow request must never hold up /up, which berth probes while the app is busy.
    daemon_threads = False
    # server_close() joins the request threads: that is what lets a stop finish requests in flight.
    block_on_close = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        # One line per request on stdout, like the node demo, instead of wsgiref's stderr format.
        print(json.dumps({"msg": "request", "line": format % args}), flush=True)


def _json(start_response, status, value):
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _text(start_response, status, text):
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _echo(environ, start_response):
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if not raw_length.isdigit():
        # wsgiref speaks HTTP/1.0 and cannot read a chunked body.
        return _json(start_response, "411 Length Required", {"error": "Content-Length required"})
    length = int(raw_length)
    content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(length))])
    stream = environ["wsgi.input"]

    def chunks():
        left = length
        while left > 0:
            chunk = stream.read(min(ECHO_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    return chunks()


def _slow(environ, start_response):
    raw = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).get("ms", ["1000"])[0]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        return _json(start_response, "400 Bad Request", {"error": "ms must be a non-negative integer"})
    slept = min(int(raw), SLOW_MAX_MS)
    time.sleep(slept / 1000)
    return _json(start_response, "200 OK", {"slept": slept, "pid": os.getpid()})


ROUTES = {
    "/": ("GET",),
    "/up": ("GET",),
    "/slow": ("GET",),
    "/echo": ("POST",),
}


def app(environ, start_response):
    global _in_flight
    path = environ.get("PATH_INFO") or "/"
    method = environ["REQUEST_METHOD"]
    if path not in ROUTES:
        # Deliberately no /env or similar: an app's environment holds secrets.
        return _json(start_response, "404 Not Found", {"error": "not found", "path": path})
    if method not in ROUTES[path]:
        return _json(start_response, "405 Method Not Allowed", {"error": "method not allowed"})
    with _lock:
        _in_flight += 1
    try:
        if path == "/":
            with _lock:
                others = _in_flight - 1
            return _json(
                start_response,
                "200 OK",
                {
                    "app": os.environ.get("BERTH_APP"),
                    "release": os.environ.get("BERTH_RELEASE"),
                    "process": os.environ.get("BERTH_PROCESS"),
                    "instance": int(os.environ["BERTH_INSTANCE"]) if os.environ.get("BERTH_INSTANCE", "").isdigit() else None,
                    "pid": os.getpid(),
                    "lang": "python",
                    # Requests being served besides this one: lets a caller see a slow request in flight.
                    "inFlight": others,
                },
            )
        if path == "/up":
            return _text(start_response, "200 OK", "ok")
        if path == "/slow":
            return _slow(environ, start_response)
        return _echo(environ, start_response)
    finally:
        with _lock:
            _in_flight -= 1


def main():
    raw_port = os.environ.get("PORT", "8000")
    if not raw_port.isdigit() or int(raw_port) > 65535:
        print(json.dumps({"msg": "PORT must be a port number", "port": raw_port}), file=sys.stderr, flush=True)
        return 2
    server = make_server("127.0.0.1", int(raw_port), app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)

    def stop(signum, _frame):
        print(json.dumps({"msg": "stopping", "signal": signal.Signals(signum).name}), flush=True)
        # shutdown() waits for serve_forever() to return, which runs on this (the main) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"msg": "listening", "address": "127.0.0.1:%d" % server.server_port, "pid": os.getpid()}), flush=True)
    server.serve_forever()
    server.server_close()
    print(json.dumps({"msg": "stopped"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
