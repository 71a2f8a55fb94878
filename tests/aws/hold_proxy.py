#!/usr/bin/env python3
"""A forwarding proxy between the broker and moto that can hold one kind of request.

tests/aws_drift_e2e.rs puts it between the broker and moto to open the window between the
broker's precondition read and its write: `POST /__hold` with a body naming a substring of
the request line, headers or body to hold; a matching request then waits (the broker's read
before it passes) until `POST /__release`. `GET /__held` answers how many requests are held.
Every request forwarded is logged, one JSON object per line (method, path, headers, body), so
a test can see what reached moto and with which condition.

Headers (Host included) and body are forwarded byte for byte, so moto verifies the broker's
SigV4 signature as if it were reached directly.

Usage: hold_proxy.py --upstream http://127.0.0.1:PORT --log FILE --port-file FILE
"""
import argparse
import http.client
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD = {"pattern": None, "held": 0, "release": threading.Event()}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _control(self, body):
        if self.path == "/__hold":
            with LOCK:
                HOLD["pattern"] = body.decode()
                HOLD["held"] = 0
                HOLD["release"] = threading.Event()
            return self._reply(200)
        if self.path == "/__release":
            with LOCK:
                HOLD["pattern"] = None
                HOLD["release"].set()
            return self._reply(200)
        if self.path == "/__held":
            return self._reply(200, str(HOLD["held"]).encode())
        return self._reply(404)

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path.startswith("/__"):
            return self._control(body)
        text = "\n".join([f"{self.command} {self.path}"] + [f"{k}: {v}" for k, v in self.headers.items()]) + "\n" + body.decode("utf-8", "replace")
        with LOCK:
            pattern = HOLD["pattern"]
            event = HOLD["release"]
            hold = pattern is not None and pattern in text
            if hold:
                HOLD["held"] += 1
        if hold:
            event.wait(120)
        with LOCK, open(self.server.log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()},
                                "body": body.decode("utf-8", "replace"), "held": hold}) + "\n")
        up = urllib.parse.urlsplit(self.server.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            conn.putheader(k, v)
        conn.endheaders(body if body else None)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        # A HEAD answer's length is the object's, not the (empty) body's.
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.upstream = args.upstream
    srv.log = args.log
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
