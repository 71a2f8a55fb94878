#!/usr/bin/env python3
"""A real HTTP upstream for seb's demo and end-to-end tests.

Records every request it receives, one JSON object per line, so a test can assert that the
upstream saw exactly the admitted requests and none of the refused ones. Answers every
request with a small JSON echo. Paths under /slow/ wait 30 s before answering (to let a test
kill the broker between its decision and outcome records); paths under /pause/ wait 5 s (to
let a test stop the broker while requests are in flight).

With --sts-delay SECONDS it stands for STS as well: a form POST with Action=AssumeRole is
answered, after that delay, with an AssumeRole answer whose access key id names the session
(`ASIA` + the RoleSessionName), so a test can tell which mint a request was signed with.

Usage: recording_upstream.py --log FILE [--port N] [--port-file FILE] [--sts-delay SECONDS]
"""
import argparse
import hashlib
import json
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_lock = threading.Lock()
    log_file = None
    sts_delay = None

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("utf-8", "replace"),
            "time": time.time(),
        }
        with Handler.log_lock:
            Handler.log_file.write(json.dumps(record) + "\n")
            Handler.log_file.flush()
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if self.command == "POST" else {}
        if Handler.sts_delay is not None and form.get("Action") == ["AssumeRole"]:
            time.sleep(Handler.sts_delay)
            return self._assume_role(form)
        if self.path.startswith("/slow/"):
            time.sleep(30)
        elif self.path.startswith("/pause/"):
            time.sleep(5)
        out = json.dumps({"ok": True, "method": self.command, "path": self.path,
                          "received_sha256": record["body_sha256"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def _assume_role(self, form):
        session = form["RoleSessionName"][0]
        role = form["RoleArn"][0]
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
        out = (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>ASIA{session}</AccessKeyId><SecretAccessKey>secret-{session}</SecretAccessKey>"
            f"<SessionToken>token-{session}</SessionToken><Expiration>{expires}</Expiration></Credentials>"
            f"<AssumedRoleUser><Arn>{role}/{session}</Arn><AssumedRoleId>AROA:{session}</AssumedRoleId></AssumedRoleUser>"
            "</AssumeRoleResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></AssumeRoleResponse>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, fmt, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--sts-delay", type=float)
    a = p.parse_args()
    Handler.sts_delay = a.sts_delay
    Handler.log_file = open(a.log, "a", buffering=1)
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.rename(tmp, a.port_file)
    print(f"listening {port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
