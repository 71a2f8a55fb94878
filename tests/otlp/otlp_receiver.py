#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for the tests: every span of every POST /v1/traces (protobuf,
decoded with the OpenTelemetry project's own classes, PyPI `opentelemetry-proto`) becomes one
JSON line in --log: ids in lowercase hex, name, kind, attributes, the resource's service.name.
A body that does not decode is answered 400 and logged as {"error": ...}, so a test sees it."""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()

    def write(obj):
        with open(args.log, "a") as f:
            f.write(json.dumps(obj) + "\n")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            req = trace_service_pb2.ExportTraceServiceRequest()
            try:
                if self.path != "/v1/traces":
                    raise ValueError(f"path {self.path}")
                if self.headers.get("content-type") != "application/x-protobuf":
                    raise ValueError(f"content-type {self.headers.get('content-type')}")
                req.ParseFromString(body)
            except Exception as e:  # noqa: BLE001 - any failure is the test's to see
                write({"error": str(e)})
                self.send_response(400)
                self.end_headers()
                return
            for rs in req.resource_spans:
                service = {a.key: value(a.value) for a in rs.resource.attributes}.get("service.name")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        write({
                            "service": service,
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                        })
            out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.replace(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
