#!/usr/bin/env python3
"""A fake of the evidence sources the signer asks, for tests and the demo.

Speaks the GitHub REST shapes the signer reads (pull request, its files, the head commit's
check runs, an environment's deployments) and a risk endpoint (POST /risk -> {"score": N}).
Its data is a JSON file re-read on every request, so a test changes the world by rewriting it:

  {"pulls": {"acme/api#42": {"head": "SHA", "files": ["services/api/x.go"],
                             "checks": [{"name": "unit", "status": "completed", "conclusion": "success"}]}},
   "deployments": {"acme/api:prod": ["registry/api:1.4.1"]},
   "risk": 12,
   "faults": {"/risk": "slow" | "garbage" | "500"}}

A fault applies to every path starting with its key. Every request is appended to --log.

Usage: evidence_fake.py --data FILE --log FILE [--port N] [--port-file FILE]
"""
import argparse
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def send_json(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with Handler.lock, open(self.server.log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "auth": self.headers.get("Authorization"),
                                "body": body.decode("utf-8", "replace")}) + "\n")
        with open(self.server.data) as f:
            data = json.load(f)
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        for prefix, fault in data.get("faults", {}).items():
            if url.path.startswith(prefix):
                if fault == "slow":
                    time.sleep(10)
                elif fault == "garbage":
                    raw = b"<html>upstream proxy error</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                else:
                    self.send_json(int(fault), {"message": "fault injected"})
                    return
        parts = url.path.strip("/").split("/")
        if self.command == "POST" and url.path == "/risk":
            return self.send_json(200, {"score": data.get("risk", 0)})
        if len(parts) >= 5 and parts[0] == "repos" and parts[3] == "pulls":
            key = f"{parts[1]}/{parts[2]}#{parts[4]}"
            pull = data.get("pulls", {}).get(key)
            if pull is None:
                return self.send_json(404, {"message": "Not Found"})
            if len(parts) == 5:
                return self.send_json(200, {"number": int(parts[4]), "state": "open",
                                            "head": {"sha": pull["head"]}})
            if parts[5] == "files":
                page = int(query.get("page", ["1"])[0])
                per = int(query.get("per_page", ["30"])[0])
                files = pull["files"][(page - 1) * per: page * per]
                return self.send_json(200, [{"filename": n, "status": "modified"} for n in files])
        if len(parts) == 6 and parts[0] == "repos" and parts[3] == "commits" and parts[5] == "check-runs":
            for pull in data.get("pulls", {}).values():
                if pull["head"] == parts[4]:
                    runs = pull.get("checks", [])
                    return self.send_json(200, {"total_count": len(runs), "check_runs": runs})
            return self.send_json(200, {"total_count": 0, "check_runs": []})
        if len(parts) == 4 and parts[0] == "repos" and parts[3] == "deployments":
            env = query.get("environment", [""])[0]
            images = data.get("deployments", {}).get(f"{parts[1]}/{parts[2]}:{env}", [])
            return self.send_json(200, [{"id": i + 1, "environment": env, "sha": "0" * 40,
                                         "payload": {"image": img}} for i, img in enumerate(images)])
        self.send_json(404, {"message": "Not Found"})

    do_GET = handle_any
    do_POST = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.data, srv.log = a.data, a.log
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(srv.server_address[1]))
        os.replace(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
