"""The anchor app for bench/deploy-under-load.ts: the same two endpoints as the berth demo app, served by
gunicorn behind nginx, reloaded with HUP. Standard library only."""

import json
import os


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    method = environ["REQUEST_METHOD"]
    if method == "POST" and path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]
    if method == "GET" and path in ("/", "/up"):
        body = json.dumps({"release": "anchor", "pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
