#!/usr/bin/env python3
"""Generates src/targets/aws/services.json from the botocore service models.

The broker has to know, for every service it fronts, the wire protocol, the operation names
and (for the rest protocols) which method + URI template + query/header bindings name each
operation. botocore ships that as data (`data/<service>/<version>/service-2.json.gz`); this
script reads it as data and writes the small subset the broker needs. The output is committed,
so builds never need Python; re-run after upgrading botocore and review the diff:

    python3 scripts/gen_aws_routes.py            # writes src/targets/aws/services.json
    python3 scripts/gen_aws_routes.py --check    # exits 1 if the committed file is stale
"""
import argparse
import gzip
import json
import os
import sys

SERVICES = [
    "s3", "ec2", "autoscaling", "ecs", "lambda", "dynamodb", "sqs", "sns", "iam", "sts",
    "cloudformation", "ssm", "secretsmanager", "kms", "eks",
]

# Operations sent only to S3 Express directory-bucket endpoints, which this broker does not
# front; on the wire they are identical to a general-purpose twin (ListDirectoryBuckets is
# `GET /` like ListBuckets), so keeping them would make those routes ambiguous.
DIRECTORY_BUCKET_ONLY = {("s3", "ListDirectoryBuckets")}

OUT = os.path.join(os.path.dirname(__file__), "..", "src", "targets", "aws", "services.json")


def load_model(data_dir, service):
    base = os.path.join(data_dir, service)
    version = sorted(os.listdir(base))[-1]
    for name in ("service-2.json.gz", "service-2.json"):
        path = os.path.join(base, version, name)
        if os.path.exists(path):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                return version, json.load(f)
    raise SystemExit(f"no service-2.json for {service} in {base}/{version}")


def rest_operation(model, op):
    http = op["http"]
    route = {"method": http["method"], "uri": http["requestUri"]}
    shape_name = (op.get("input") or {}).get("shape")
    labels, query, headers, header_prefixes, body = {}, {}, {}, {}, []
    required_query, required_headers = [], []
    payload, payload_blob = None, False
    if shape_name:
        shape = model["shapes"][shape_name]
        required = set(shape.get("required", []))
        payload = shape.get("payload")
        for member, ref in shape.get("members", {}).items():
            loc = ref.get("location")
            wire = ref.get("locationName", member)
            if loc == "uri":
                labels[wire] = member
            elif loc == "querystring":
                if model["shapes"][ref["shape"]]["type"] == "map":
                    # A map bound to the query string takes every other key (rare: apigateway).
                    query["*"] = member
                else:
                    query[wire] = member
                    if member in required:
                        required_query.append(wire)
            elif loc == "header":
                headers[wire.lower()] = member
                if member in required:
                    required_headers.append(wire.lower())
            elif loc == "headers":
                header_prefixes[wire.lower()] = member
            elif member != payload:
                body.append(member)
        if payload:
            target = model["shapes"][shape["members"][payload]["shape"]]
            payload_blob = target["type"] in ("blob", "string")
    route.update({
        "labels": labels,
        "query": query,
        "headers": headers,
        "header_prefixes": header_prefixes,
        "body_members": sorted(body),
        "payload": payload,
        "payload_blob": payload_blob,
        "required_query": sorted(required_query),
        "required_headers": sorted(required_headers),
    })
    return route


def route_key(r):
    return (r["method"], r["uri"], tuple(r["required_query"]), tuple(r["required_headers"]))


def drop_deprecated_twins(operations, model):
    """A deprecated operation whose route is identical to a current one (S3's
    PutBucketLifecycle and PutBucketLifecycleConfiguration) is the same request on the wire:
    the broker names it by the current operation. Any other identical pair is an error here,
    so an ambiguous table is never committed."""
    by_route = {}
    for name, r in operations.items():
        by_route.setdefault(route_key(r), []).append(name)
    for names in by_route.values():
        if len(names) < 2:
            continue
        current = [n for n in names if not model["operations"][n].get("deprecated")]
        if len(current) != 1:
            raise SystemExit(f"ambiguous routes in the model: {names}")
        for n in names:
            if n not in current:
                del operations[n]


def generate(data_dir):
    out = {}
    for service in SERVICES:
        version, model = load_model(data_dir, service)
        meta = model["metadata"]
        protocol = meta["protocol"]
        entry = {
            "api_version": version,
            "protocol": protocol,
            "signing_name": meta.get("signingName", meta["endpointPrefix"]),
            "endpoint_prefix": meta["endpointPrefix"],
            "target_prefix": meta.get("targetPrefix"),
            "json_version": meta.get("jsonVersion"),
            "global_endpoint": meta.get("globalEndpoint"),
            "operations": {},
        }
        for name, op in sorted(model["operations"].items()):
            if (service, name) in DIRECTORY_BUCKET_ONLY:
                continue
            if protocol in ("rest-json", "rest-xml"):
                entry["operations"][name] = rest_operation(model, op)
            else:
                entry["operations"][name] = {}
        if protocol in ("rest-json", "rest-xml"):
            drop_deprecated_twins(entry["operations"], model)
        out[entry["signing_name"]] = entry
    return out


def render(table):
    # One operation per line keeps regeneration diffs reviewable.
    lines = ["{"]
    services = sorted(table.items())
    for si, (name, svc) in enumerate(services):
        head = {k: v for k, v in svc.items() if k != "operations"}
        lines.append(f"  {json.dumps(name)}: {{")
        for k, v in head.items():
            lines.append(f"    {json.dumps(k)}: {json.dumps(v)},")
        lines.append('    "operations": {')
        ops = list(svc["operations"].items())
        for oi, (op, route) in enumerate(ops):
            comma = "," if oi < len(ops) - 1 else ""
            lines.append(f"      {json.dumps(op)}: {json.dumps(route, sort_keys=True)}{comma}")
        lines.append("    }")
        lines.append("  }" + ("," if si < len(services) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    import botocore
    data_dir = os.path.join(os.path.dirname(botocore.__file__), "data")
    text = render(generate(data_dir))
    header_note = f"botocore {botocore.__version__}"
    if args.check:
        with open(OUT, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{OUT} is stale against {header_note}; re-run {sys.argv[0]}", file=sys.stderr)
                return 1
        return 0
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT} from {header_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
