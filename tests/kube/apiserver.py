#!/usr/bin/env python3
"""A small kube-apiserver for seb's tests, faithful where the broker depends on it.

No real kube-apiserver can be installed on the test machines, so this one stands in:
- TLS only; every request must carry the broker's bearer token, anything else is 401;
- /api and /apis path rules, legacy discovery (/api, /apis, /api/v1, /apis/G/V), /version;
  openapi is 404 (kubectl copes without it, except client-side apply, see README);
- objects with resourceVersion; a stale one in an update, a patch or DELETE preconditions
  is 409 Conflict; create of an existing name is 409 AlreadyExists;
- create, get, list (labelSelector a=b, fieldSelector metadata.name=x), update, patch
  (merge, JSON, strategic merge with the built-in merge keys, apply with a JSON body), delete,
  deletecollection, the scale subresource, and watch streams (chunked, one JSON event per line);
- protobuf request bodies are 415, as for a server that only reads JSON.

Every request is a line in --log (JSON), with its impersonation headers, so tests can assert
that refused mutations never arrived and admitted ones ran as the configured identity. With
--audit-log, every completed request is also an `audit.k8s.io/v1` Event line there, as a real
apiserver's log backend writes them (level Metadata, stage ResponseComplete), for
`seb reconcile`.

--agent-token-env names a second accepted token, an agent's own credential (--agent-user): it
may read, and mutate only with --agent-can-write (a cluster where the bypass guard is missing).
SelfSubjectAccessReviews are answered for both identities (`seb preflight`).

Usage: apiserver.py --log FILE --cert PEM --key PEM --token-env VAR [--port-file FILE]
                    [--audit-log FILE] [--broker-user NAME]
                    [--agent-token-env VAR --agent-user NAME [--agent-can-write]]
"""
import argparse
import base64
import copy
import hashlib
import json
import os
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# (group, version, resource, kind, namespaced, subresources)
RESOURCES = [
    ("", "v1", "pods", "Pod", True, ["status", "exec", "log"]),
    ("", "v1", "services", "Service", True, ["status"]),
    ("", "v1", "configmaps", "ConfigMap", True, []),
    ("", "v1", "secrets", "Secret", True, []),
    ("", "v1", "namespaces", "Namespace", False, ["status"]),
    ("", "v1", "serviceaccounts", "ServiceAccount", True, ["token"]),
    ("apps", "v1", "deployments", "Deployment", True, ["status", "scale"]),
    ("apps", "v1", "statefulsets", "StatefulSet", True, ["status", "scale"]),
    ("apps", "v1", "daemonsets", "DaemonSet", True, ["status"]),
    ("apps", "v1", "replicasets", "ReplicaSet", True, ["status", "scale"]),
    ("batch", "v1", "jobs", "Job", True, ["status"]),
    ("batch", "v1", "cronjobs", "CronJob", True, ["status"]),
]
SHORT = {"pods": ["po"], "services": ["svc"], "configmaps": ["cm"], "namespaces": ["ns"],
         "deployments": ["deploy"], "statefulsets": ["sts"], "daemonsets": ["ds"],
         "replicasets": ["rs"], "cronjobs": ["cj"]}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def find(group, version, resource):
    for r in RESOURCES:
        if r[0] == group and r[1] == version and r[2] == resource:
            return r
    return None


class Store:
    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 100
        self.objects = {}  # (group, resource, ns, name) -> obj
        self.events = []  # (rv:int, group, resource, ns, type, obj)

    def next_rv(self):
        self.rv += 1
        return str(self.rv)

    def emit(self, key, typ, obj):
        self.events.append((int(obj["metadata"]["resourceVersion"]), key[0], key[1], key[2], typ, copy.deepcopy(obj)))
        self.lock.notify_all()


STORE = Store()


class ApiError(Exception):
    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


# --- patches, with the apiserver's semantics -------------------------------------------------

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _ptr(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"bad pointer {path}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc, parts):
    for p in parts:
        if isinstance(doc, list):
            doc = doc[int(p)]
        else:
            doc = doc[p]
    return doc


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            parts = _ptr(op["path"])
            name = op["op"]
            # evanphx/json-patch (the apiserver's) finds no parent for "": only test may name
            # the whole document.
            if name != "test" and (not parts or name in ("move", "copy") and op.get("from") == ""):
                raise ApiError(422, "Invalid", f"json patch: {name} on the whole document")
            if name == "test":
                if _resolve(doc, parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
                continue
            if name in ("move", "copy"):
                src = _ptr(op["from"])
                val = copy.deepcopy(_resolve(doc, src))
                if name == "move":
                    parent = _resolve(doc, src[:-1])
                    if isinstance(parent, list):
                        parent.pop(int(src[-1]))
                    else:
                        del parent[src[-1]]
                name, op = "add", {"value": val}
            parent = _resolve(doc, parts[:-1])
            last = parts[-1]
            if name == "remove" or name == "replace":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
                if name == "remove":
                    continue
            if isinstance(parent, list):
                i = len(parent) if last == "-" else int(last)
                if i > len(parent):
                    raise ApiError(422, "Invalid", "index out of range")
                parent.insert(i, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"json patch: {e!r}")
    return doc


def list_key(field, in_container):
    if field in ("containers", "initContainers", "ephemeralContainers", "env", "volumes", "imagePullSecrets",
                 "resourceClaims", "schedulingGates"):
        return "name"
    if field == "volumeMounts":
        return "mountPath"
    if field == "volumeDevices":
        return "devicePath"
    if field == "ports":
        return "containerPort" if in_container else "port"
    if field == "hostAliases":
        return "ip"
    if field == "conditions":
        return "type"
    if field == "ownerReferences":
        return "uid"
    if field == "topologySpreadConstraints":
        return "topologyKey"
    if field == "finalizers":
        return "$set"
    return None


# Strategic merge patch as apimachinery's strategicpatch (1.32) computes it with the apiserver's
# options (MergeParallelList, IgnoreUnmatchedNulls), written from reading it: list order
# (normalizeElementOrder), values new to the object taken as sent (removeDirectives), a
# $deleteFromPrimitiveList on a list of objects merging them, $patch: delete leaving {}.
# What the typed decoder then does (dropping unknown members such as "$patch") is done by
# drop_unknown at the end.

def _bad(msg):
    return ApiError(422, "Invalid", f"strategic merge patch: {msg}")


def _gotype(x):
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int):
        return "int"
    if isinstance(x, float):
        return "float"
    if x is None:
        return "nil"
    return type(x).__name__


def remove_directives(v):
    if isinstance(v, dict):
        if "$patch" in v:
            return None, False
        out = {}
        for k, c in v.items():
            nv, keep = remove_directives(c)
            if keep:
                out[k] = nv
        return out, True
    if isinstance(v, list):
        res = []
        for c in v:
            nv, keep = remove_directives(c)
            if keep:
                res.append(nv)
        return res, True
    return v, True


def discard_nulls(v):
    if isinstance(v, dict):
        for k in [k for k, c in v.items() if c is None]:
            del v[k]
        for c in v.values():
            discard_nulls(c)
    elif isinstance(v, list):
        for c in v:
            discard_nulls(c)


def _ident(x, key):
    """What apimachinery's index() compares: the merge key's value (nil for a non-map), or
    the item; Go's == on interfaces compares the type too."""
    if key:
        v = x.get(key) if isinstance(x, dict) else None
    else:
        v = x
    return (_gotype(v), v)


def _index(lst, v, key):
    want = _ident(v, key)
    for i, o in enumerate(lst):
        if _ident(o, key) == want:
            return i
    return -1


def _sort(items, order, key):
    if key:
        for x in list(items) + list(order):
            if not isinstance(x, dict) or key not in x:
                raise _bad(f"no merge key {key}")
    keep = [x for x in items if not (isinstance(x, dict) and x.get("$patch") == "delete")]
    dels = [x for x in items if isinstance(x, dict) and x.get("$patch") == "delete"]
    idx = [_index(order, x, key) for x in keep]
    if any(i < 0 for i in idx):
        # Go's comparator is inconsistent here; seb refuses such patches.
        raise _bad("element not in its order list")
    return [x for _, x in sorted(zip(idx, keep), key=lambda p: p[0])] + dels


def normalize_order(patch_items, server_only, patch_order, server_order, key):
    right = _sort(patch_items, patch_order, key)
    left = _sort(server_only, server_order, key)
    out, i, j = [], 0, 0
    while i < len(left) or j < len(right):
        if i >= len(left):
            out.append(right[j]); j += 1
        elif j >= len(right):
            out.append(left[i]); i += 1
        else:
            li, ri = _index(server_order, left[i], key), _index(server_order, right[j], key)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i]); i += 1
            else:
                out.append(right[j]); j += 1
    return out


def _elem_kind(*lists):
    t = None
    for l in lists:
        for v in l:
            if isinstance(v, list):
                raise _bad("lists of lists")
            if t is None:
                t = _gotype(v)
            elif t != _gotype(v):
                raise _bad("list element types differ")
    if t is None:
        raise _bad("no elements in any of the given slices")
    return t


def _find(lst, key, value):
    for i, o in enumerate(lst):
        if not isinstance(o, dict):
            raise _bad("value is not a map")
        if key in o and o[key] == value and _gotype(o[key]) == _gotype(value):
            return i
    return -1


def merge_slice(orig, patch, key, containers, delete_list=False):
    if not orig and not patch:
        return orig
    kind = _elem_kind(orig, patch)
    if kind != "dict":
        if delete_list:
            return [x for x in orig if x not in patch]
        both = []
        for x in orig + patch:
            if x not in both:
                both.append(x)
        in_patch = [x for x in both if x in patch]
        server_only = [x for x in both if x not in patch]
        return normalize_order(in_patch, server_only, patch, orig, None)
    if not key or key == "$set":
        raise _bad("cannot merge lists without merge key")
    rest, replace = [], False
    for e in patch:
        d = e.get("$patch", None) if "$patch" in e else None
        if "$patch" not in e:
            rest.append(e)
        elif d == "delete":
            if key not in e:
                raise _bad("delete element without merge key")
            orig = [o for o in orig if not (key in o and o[key] == e[key])]
        elif d == "replace":
            replace = True
        else:
            raise _bad(f"bad $patch {d!r} in a list")
    if replace:
        orig, rest = rest, []
    server_order = list(orig)
    out = list(orig)
    for e in rest:
        if key not in e:
            raise _bad(f"list element has no merge key {key}")
        i = _find(out, key, e[key])
        if i >= 0:
            out[i] = smp(out[i], e, containers)
        else:
            out.append(e)
    in_patch, server_only = [], []
    for o in out:
        if not isinstance(o, dict) or key not in o:
            raise _bad(f"no merge key {key}")
        (in_patch if _find(rest, key, o[key]) >= 0 else server_only).append(o)
    return normalize_order(in_patch, server_only, rest, server_order, key)


def _validate_order(patch_list, order, key):
    if not order or not patch_list:
        return
    kept = [e for e in patch_list if not (key and isinstance(e, dict) and e.get("$patch") == "delete")]
    p = o = 0
    while p < len(kept) and o < len(order):
        if isinstance(kept[p], dict) and "$patch" in kept[p]:
            p += 1
            continue
        if key:
            if key not in kept[p] or not isinstance(order[o], dict) or key not in order[o]:
                raise _bad("no merge key")
            eq = kept[p][key] == order[o][key]
        else:
            eq = kept[p] == order[o]
        if eq:
            p += 1
        o += 1
    if p < len(kept):
        raise _bad("the order in the patch list does not match $setElementOrder")


def smp(original, patch, in_container=False):
    """Strategic merge patch of a map (apimachinery's mergeMap)."""
    if not isinstance(patch, dict):
        raise ApiError(400, "BadRequest", "strategic merge patch must be an object")
    patch = copy.deepcopy(patch)
    if "$patch" in patch:
        d = patch.pop("$patch")
        if d == "replace":
            return patch
        if d == "delete":
            return {}
        raise _bad(f"unknown $patch {d!r}")
    out = copy.deepcopy(original) if isinstance(original, dict) else {}
    if "$retainKeys" in patch:
        keep = patch.pop("$retainKeys")
        if not isinstance(keep, list):
            raise _bad("$retainKeys must be a list")
        for k, v in patch.items():
            if v is None or k.startswith("$deleteFromPrimitiveList/") or k.startswith("$setElementOrder/"):
                continue
            if k not in keep:
                raise _bad(f"{k} is not in $retainKeys")
        out = {k: v for k, v in out.items() if k in keep}
    for k in [k for k in patch if k.startswith("$setElementOrder/")]:
        order = patch.pop(k)
        f = k.split("/", 1)[1]
        key = list_key(f, in_container)
        if key is None:
            raise _bad(f"{f} has no merge strategy")
        key = None if key == "$set" else key
        if not isinstance(order, list):
            raise _bad("$setElementOrder must be a list")
        has_o, has_p = f in out, f in patch
        o_list, p_list = out.get(f), patch.get(f)
        if has_o and not isinstance(o_list, list) or has_p and not isinstance(p_list, list):
            raise _bad("not a list")
        _validate_order(p_list or [], order, key)
        if has_o and not has_p:
            merged = o_list
        elif has_p and not has_o:
            merged, _ = remove_directives(p_list)
        elif has_o and has_p:
            merged = merge_slice(o_list, p_list, key or "$set", f in ("containers", "initContainers", "ephemeralContainers"))
        else:
            continue
        if key:
            for x in merged:
                if not isinstance(x, dict) or key not in x:
                    raise _bad("no merge key")
            in_o = [x for x in merged if any(isinstance(z, dict) and z.get(key) == x[key] for z in order)]
            srv = [x for x in merged if not any(isinstance(z, dict) and z.get(key) == x[key] for z in order)]
        else:
            in_o = [x for x in merged if x in order]
            srv = [x for x in merged if x not in order]
        _elem_kind(o_list or [], p_list or [])
        out[f] = normalize_order(in_o, srv, order, o_list or [], key)
        patch.pop(f, None)
    for k, v in patch.items():
        delete_list = k.startswith("$deleteFromPrimitiveList/")
        if delete_list:
            k = k.split("/", 1)[1]
        elif k.startswith("$"):
            raise ApiError(400, "BadRequest", f"unknown directive {k}")
        if v is None:
            out.pop(k, None)
            continue
        if k not in out or not _gotype(out[k]) == _gotype(v):
            if not delete_list:
                discard_nulls(v)
                nv, keep = remove_directives(v)
                if keep:
                    out[k] = nv
                else:
                    out.pop(k, None)
            continue
        if isinstance(v, dict):
            out[k] = smp(out[k], v)
        elif isinstance(v, list):
            key = list_key(k, in_container)
            if key or delete_list:
                out[k] = merge_slice(out[k], v, key, k in ("containers", "initContainers", "ephemeralContainers"), delete_list)
            else:
                out[k] = v
        else:
            nv, keep = remove_directives(v)
            out[k] = nv
    return out


def decoded(v):
    """What the typed decoder keeps: members the schema has ("$..." never is one), and no
    nulls (a null member decodes as unset)."""
    if isinstance(v, dict):
        return {k: decoded(c) for k, c in v.items() if not k.startswith("$") and c is not None}
    if isinstance(v, list):
        return [decoded(c) for c in v]
    return v


def smp_oracle(path):
    """For seb's differential tests: one {"kind" (smp, json, merge), "live", "patch"} per line
    in, one {"ok"} or {"err"} per line out."""
    with open(path) as f:
        for line in f:
            case = json.loads(line)
            try:
                kind = case.get("kind", "smp")
                if kind == "json":
                    out = {"ok": json_patch(case["live"], case["patch"])}
                elif kind == "merge":
                    out = {"ok": merge_patch(case["live"], case["patch"])}
                else:
                    out = {"ok": decoded(smp(case["live"], case["patch"]))}
            except ApiError as e:
                out = {"err": e.message}
            except Exception as e:  # apimachinery would panic or error; either way no result
                out = {"err": repr(e)}
            print(json.dumps(out))


# --- the server -------------------------------------------------------------------------------

def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes; with Nagle on, each answer waits for a delayed ACK.
    disable_nagle_algorithm = True
    token = None
    minted = {}  # TokenRequest tokens -> the service account user they authenticate
    log_file = None
    log_lock = threading.Lock()
    audit_file = None
    broker_user = "system:serviceaccount:seb:seb"
    agent_token = None
    agent_user = None
    agent_can_write = False

    def log_message(self, fmt, *args):
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.code = code
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authenticated(self):
        auth = self.headers.get("Authorization", "")
        if auth == f"Bearer {Handler.token}":
            return "broker"
        if Handler.agent_token and auth == f"Bearer {Handler.agent_token}":
            return "agent"
        return Handler.minted.get(auth.removeprefix("Bearer "))

    def username(self):
        who = self.authenticated()
        return {"broker": Handler.broker_user, "agent": Handler.agent_user}.get(who, who)

    def may(self, verb):
        """What the authenticated identity may do: the broker anything, the agent reads (and
        writes with --agent-can-write), a minted token anything (it is the broker's)."""
        if self.authenticated() != "agent":
            return True
        return verb in ("get", "list", "watch") or Handler.agent_can_write

    def audit(self, started):
        """One audit.k8s.io/v1 Event, level Metadata, for a completed request."""
        if Handler.audit_file is None:
            return
        url = urlsplit(self.path)
        verb, ref = request_info(self.command, url.path, parse_qs(url.query), getattr(self, "body_name", None))
        ev = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
              "auditID": str(uuid.uuid4()), "stage": "ResponseComplete", "requestURI": self.path,
              "verb": verb, "user": {"username": self.username() or "system:anonymous",
                                     "groups": ["system:authenticated"] if self.username() else ["system:unauthenticated"]},
              "sourceIPs": [self.client_address[0]], "userAgent": self.headers.get("User-Agent", ""),
              "responseStatus": {"metadata": {}, "code": getattr(self, "code", 0)},
              "requestReceivedTimestamp": rfc3339(started), "stageTimestamp": rfc3339(time.time())}
        imp_user = self.headers.get("Impersonate-User")
        if imp_user is not None:
            extra = {}
            for k in set(self.headers.keys()):
                if k.lower().startswith("impersonate-extra-"):
                    extra[k.lower().removeprefix("impersonate-extra-")] = self.headers.get_all(k)
            ev["impersonatedUser"] = {"username": imp_user, "groups": self.headers.get_all("Impersonate-Group") or [],
                                      "extra": extra}
        if ref is not None:
            ev["objectRef"] = ref
        with Handler.log_lock:
            Handler.audit_file.write(json.dumps(ev) + "\n")
            Handler.audit_file.flush()

    def record(self, body):
        imp = {k.lower(): self.headers.get_all(k) for k in set(self.headers.keys())
               if k.lower().startswith("impersonate-") or k.lower().startswith("x-remote-")}
        rec = {"method": self.command, "path": self.path, "content_type": self.headers.get("Content-Type"),
               "auth": self.authenticated(), "impersonate": imp, "body": body.decode("utf-8", "replace"),
               "time": time.time()}
        with Handler.log_lock:
            Handler.log_file.write(json.dumps(rec) + "\n")
            Handler.log_file.flush()

    def handle_any(self):
        started = time.time()
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            # kubectl streams a body it reads from stdin (`create --raw -f -`) in chunks.
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        self.record(body)
        self.code = 0
        self.body_name = None  # the handler outlives one request on a kept-alive connection
        if self.command == "POST" and body:
            try:
                self.body_name = (json.loads(body).get("metadata") or {}).get("name")
            except (ValueError, AttributeError):
                self.body_name = None
        try:
            self.authorize_and_route(body)
        finally:
            self.audit(started)

    def authorize_and_route(self, body):
        if self.authenticated() is None:
            return self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        url = urlsplit(self.path)
        if url.path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" and self.command == "POST":
            return self.access_review(body)
        verb, _ = request_info(self.command, url.path, parse_qs(url.query), None)
        if self.authenticated() == "agent" and not Handler.agent_can_write and any(k.lower().startswith("impersonate-") for k in self.headers.keys()):
            return self.send_json(403, status(403, "Forbidden", f'User "{Handler.agent_user}" cannot impersonate'))
        if not self.may(verb):
            return self.send_json(403, status(403, "Forbidden", f'User "{Handler.agent_user}" cannot {verb} here'))
        try:
            self.route(body)
        except ApiError as e:
            self.send_json(e.code, status(e.code, e.reason, e.message))
        except OSError:
            # The client went away (a watch that was stopped); nothing to answer.
            pass

    def access_review(self, body):
        review = self.decode(body)
        attrs = (review.get("spec") or {}).get("resourceAttributes") or {}
        allowed = self.may(attrs.get("verb", ""))
        review["status"] = {"allowed": allowed}
        if not allowed:
            review["status"]["reason"] = f'{Handler.agent_user} may only read'
        review.setdefault("apiVersion", "authorization.k8s.io/v1")
        review.setdefault("kind", "SelfSubjectAccessReview")
        return self.send_json(201, review)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def route(self, body):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if url.path == "/version":
            return self.send_json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-seb-test",
                                        "platform": "linux/amd64"})
        if url.path == "/api":
            return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if url.path == "/apis":
            groups = sorted({r[0] for r in RESOURCES if r[0]})
            return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]})
        if parts[:1] == ["api"] and len(parts) == 2 or parts[:1] == ["apis"] and len(parts) == 3:
            group = "" if parts[0] == "api" else parts[1]
            gv = parts[-1] if not group else f"{group}/{parts[-1]}"
            res = []
            for r in RESOURCES:
                if r[0] != group:
                    continue
                res.append({"name": r[2], "singularName": r[3].lower(), "namespaced": r[4], "kind": r[3],
                            "verbs": VERBS, "shortNames": SHORT.get(r[2], [])})
                for s in r[5]:
                    kind = {"scale": "Scale", "exec": "PodExecOptions", "log": "Pod"}.get(s, r[3])
                    res.append({"name": f"{r[2]}/{s}", "singularName": "", "namespaced": r[4], "kind": kind,
                                "verbs": ["get", "patch", "update"] if s != "exec" else ["create", "get"]})
            if not res:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self.send_json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res})
        if parts[:1] not in (["api"], ["apis"]):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self.resource(parts, q, body)

    def resource(self, parts, q, body):
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        watch_path = bool(rest) and rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "not found")
        info = find(group, version, rest[0])
        if info is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({rest[0]})")
        resource, kind, namespaced = info[2], info[3], info[4]
        if namespaced and rest[0] != "namespaces" and ns is None and len(rest) > 1:
            raise ApiError(404, "NotFound", "namespaced resource without a namespace")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        api_version = version if not group else f"{group}/{version}"
        key = (group, resource, ns, name)
        m = self.command
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if body and "protobuf" in ctype:
            raise ApiError(415, "UnsupportedMediaType", "this test apiserver reads JSON only")
        with STORE.lock:
            if name is None:
                if m == "GET" and (watch_path or q.get("watch") in ("true", "1")):
                    return self.watch(group, resource, ns, q)
                if m == "GET":
                    return self.send_json(200, self.list(group, resource, kind, api_version, ns, q))
                if m == "POST":
                    obj = self.decode(body)
                    n = obj.get("metadata", {}).get("name")
                    if not n:
                        raise ApiError(422, "Invalid", "metadata.name: Required value")
                    return self.send_json(201, self.create((group, resource, ns, n), obj, kind, api_version, q))
                if m == "DELETE":
                    items = [k for k in STORE.objects if k[:3] == (group, resource, ns)]
                    for k in items:
                        self.remove(k)
                    return self.send_json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                raise ApiError(405, "MethodNotAllowed", "method not allowed")
            if resource == "pods" and sub == "exec":
                if key not in STORE.objects:
                    raise ApiError(404, "NotFound", f'pods "{name}" not found')
                return self.exec_websocket(name, parse_qs(urlsplit(self.path).query))
            if resource == "serviceaccounts" and sub == "token" and m == "POST":
                return self.token_request(key, body)
            if sub not in (None, "scale", "status"):
                raise ApiError(404, "NotFound", f"subresource {sub} is not served by the test apiserver")
            cur = STORE.objects.get(key)
            if m == "PATCH" and ctype == "application/apply-patch+yaml" and cur is None and sub is None:
                obj = self.decode(body)
                return self.send_json(201, self.create(key, obj, kind, api_version, q))
            if cur is None:
                raise ApiError(404, "NotFound", f'{resource}{"." + group if group else ""} "{name}" not found')
            view = self.scale_of(cur) if sub == "scale" else cur
            if m == "GET":
                return self.send_json(200, view)
            if m == "DELETE":
                opts = json.loads(body) if body else {}
                pre = (opts.get("preconditions") or {}).get("resourceVersion")
                if pre is not None and pre != cur["metadata"]["resourceVersion"]:
                    raise ApiError(409, "Conflict", f"Precondition failed: ResourceVersion in precondition: {pre}, ResourceVersion in object meta: {cur['metadata']['resourceVersion']}")
                self.remove(key)
                return self.send_json(200, cur)
            if m == "PUT":
                new = self.decode(body)
            elif m == "PATCH":
                new = self.apply_patch(view, ctype, body)
            else:
                raise ApiError(405, "MethodNotAllowed", "method not allowed")
            want_rv = (new.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource}{"." + group if group else ""} "{name}": the object has been modified; please apply your changes to the latest version and try again')
            if sub == "scale":
                replicas = (new.get("spec") or {}).get("replicas")
                updated = copy.deepcopy(cur)
                updated["spec"]["replicas"] = replicas
            else:
                updated = new
                keep = cur["metadata"]
                updated.setdefault("metadata", {})
                for f in ("uid", "creationTimestamp", "namespace", "name"):
                    if f in keep:
                        updated["metadata"][f] = keep[f]
                updated["kind"], updated["apiVersion"] = kind, api_version
                if "status" in cur:
                    updated["status"] = cur["status"]
            if q.get("dryRun") != "All":
                self.store(key, updated, "MODIFIED")
            return self.send_json(200, self.scale_of(updated) if sub == "scale" else updated)

    def exec_websocket(self, pod, query):
        """exec over a websocket with the v4/v5 channel protocol: one line of output on stdout
        naming what ran, then a Success status on the error channel, then close."""
        if (self.headers.get("Upgrade") or "").lower() != "websocket":
            raise ApiError(400, "BadRequest", "this test apiserver serves exec over websocket only")
        offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
        if proto is None:
            raise ApiError(400, "BadRequest", f"no supported channel protocol in {offered}")
        guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + guid).encode()).digest()).decode()
        self.code = 101
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", proto)
        self.end_headers()
        container = (query.get("container") or ["-"])[0]
        out = f"exec in {pod}/{container}: {' '.join(query.get('command', []))}\n".encode()
        self.ws_frame(b"\x01" + out)
        self.ws_frame(b"\x03" + json.dumps({"metadata": {}, "status": "Success"}).encode())
        self.wfile.write(b"\x88\x02\x03\xe8")  # close, 1000
        self.wfile.flush()
        self.close_connection = True

    def ws_frame(self, data):
        n = len(data)
        if n < 126:
            head = bytes([0x82, n])
        elif n < 65536:
            head = bytes([0x82, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x82, 127]) + n.to_bytes(8, "big")
        self.wfile.write(head + data)
        self.wfile.flush()

    def token_request(self, key, body):
        if key not in STORE.objects:
            raise ApiError(404, "NotFound", f'serviceaccounts "{key[3]}" not found')
        if self.authenticated() != "broker":
            raise ApiError(403, "Forbidden", "only the broker may request tokens here")
        req = self.decode(body)
        spec = req.get("spec") or {}
        seconds = spec.get("expirationSeconds", 3600)
        if seconds < 600:
            raise ApiError(422, "Invalid", "spec.expirationSeconds: may not specify a duration less than 10 minutes")
        token = "sa-" + uuid.uuid4().hex
        Handler.minted[token] = f"system:serviceaccount:{key[2]}:{key[3]}"
        exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
        return self.send_json(201, {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                                    "metadata": {"name": key[3], "namespace": key[2]},
                                    "spec": {"audiences": spec.get("audiences", []), "expirationSeconds": seconds},
                                    "status": {"token": token, "expirationTimestamp": exp}})

    def decode(self, body):
        try:
            v = json.loads(body)
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"body is not JSON: {e}")
        if not isinstance(v, dict):
            raise ApiError(400, "BadRequest", "body must be an object")
        return v

    def apply_patch(self, cur, ctype, body):
        try:
            p = json.loads(body)
        except ValueError:
            raise ApiError(415 if ctype == "application/apply-patch+yaml" else 400, "BadRequest", "patch is not JSON")
        if ctype == "application/merge-patch+json":
            return merge_patch(cur, p)
        if ctype == "application/json-patch+json":
            if not isinstance(p, list):
                raise ApiError(400, "BadRequest", "json patch must be a list")
            return json_patch(cur, p)
        if ctype in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
            return decoded(smp(cur, p))
        raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json ({ctype})")

    def scale_of(self, obj):
        md = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": md["name"], "namespace": md.get("namespace"), "uid": md.get("uid"),
                             "resourceVersion": md["resourceVersion"], "creationTimestamp": md.get("creationTimestamp")},
                "spec": {"replicas": obj.get("spec", {}).get("replicas", 1)},
                "status": {"replicas": obj.get("status", {}).get("replicas", 0), "selector": "app=x"}}

    def create(self, key, obj, kind, api_version, q):
        if key in STORE.objects:
            raise ApiError(409, "AlreadyExists", f'{key[1]} "{key[3]}" already exists')
        md = obj.setdefault("metadata", {})
        md.pop("resourceVersion", None)
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if key[2]:
            md["namespace"] = key[2]
        obj["kind"], obj["apiVersion"] = kind, api_version
        if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
            obj.setdefault("spec", {}).setdefault("replicas", 1)
            obj["status"] = {"replicas": obj["spec"]["replicas"]}
        if q.get("dryRun") == "All":
            md["resourceVersion"] = ""
            return obj
        self.store(key, obj, "ADDED")
        return obj

    def store(self, key, obj, typ):
        obj["metadata"]["resourceVersion"] = STORE.next_rv()
        if obj["kind"] != "Scale":
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 0) + 1
        STORE.objects[key] = obj
        STORE.emit(key, typ, obj)

    def remove(self, key):
        obj = STORE.objects.pop(key)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = STORE.next_rv()
        STORE.emit(key, "DELETED", obj)

    def selected(self, key, obj, ns, q):
        if ns is not None and key[2] != ns:
            return False
        fs = q.get("fieldSelector")
        if fs:
            for term in fs.split(","):
                f, _, v = term.partition("=")
                if f == "metadata.name" and obj["metadata"]["name"] != v.lstrip("="):
                    return False
        ls = q.get("labelSelector")
        if ls:
            labels = obj["metadata"].get("labels") or {}
            for term in ls.split(","):
                k, _, v = term.partition("=")
                if labels.get(k) != v:
                    return False
        return True

    def list(self, group, resource, kind, api_version, ns, q):
        items = [copy.deepcopy(o) for k, o in sorted(STORE.objects.items(), key=lambda kv: str(kv[0]))
                 if k[:2] == (group, resource) and self.selected(k, o, ns, q)]
        for i in items:
            i.pop("kind", None)
            i.pop("apiVersion", None)
        return {"kind": f"{kind}List", "apiVersion": api_version,
                "metadata": {"resourceVersion": str(STORE.rv)}, "items": items}

    def watch(self, group, resource, ns, q):
        # Called with the store lock held; releases it while waiting for events.
        since = int(q.get("resourceVersion") or 0)
        deadline = time.time() + min(int(q.get("timeoutSeconds") or 30), 60)
        self.code = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        sent = 0
        if since == 0:
            for k, o in sorted(STORE.objects.items(), key=lambda kv: str(kv[0])):
                if k[:2] == (group, resource) and self.selected(k, o, ns, q):
                    self.chunk({"type": "ADDED", "object": o})
            since = STORE.rv
        while time.time() < deadline:
            for ev in STORE.events[sent:]:
                rv, g, r, evns, typ, obj = ev
                if rv > since and (g, r) == (group, resource) and self.selected((g, r, evns), obj, ns, q):
                    self.chunk({"type": typ, "object": obj})
            sent = len(STORE.events)
            STORE.lock.wait(timeout=max(0.0, min(1.0, deadline - time.time())))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def chunk(self, event):
        data = (json.dumps(event) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def request_info(method, path, q, body_name):
    """(verb, objectRef) as the apiserver's request info gives them for the audit log."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower()), None
    watch = bool(rest) and rest[0] == "watch"
    if watch:
        rest = rest[1:]
    ns = None
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        ns, rest = rest[1], rest[2:]
    if not rest:
        return "get", None
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if resource == "namespaces" and name is not None and ns is None and len(rest) == 2:
        pass
    if name is None:
        verb = {"GET": "watch" if watch or q.get("watch", [""])[0] in ("true", "1") else "list",
                "POST": "create", "DELETE": "deletecollection"}.get(method, method.lower())
    else:
        verb = {"GET": "watch" if watch else "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, method.lower())
    ref = {"resource": resource, "apiVersion": version}
    if group:
        ref["apiGroup"] = group
    if ns is not None:
        ref["namespace"] = ns
    if name is not None:
        ref["name"] = name
    elif method == "POST" and body_name:
        ref["name"] = body_name
    if sub is not None:
        ref["subresource"] = sub
    return verb, ref


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--smp-oracle":
        return smp_oracle(sys.argv[2])
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--token-env", required=True, help="environment variable holding the one accepted bearer token")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--audit-log")
    p.add_argument("--broker-user", default=Handler.broker_user)
    p.add_argument("--agent-token-env")
    p.add_argument("--agent-user", default="agent")
    p.add_argument("--agent-can-write", action="store_true")
    a = p.parse_args()
    Handler.token = os.environ[a.token_env]
    Handler.broker_user = a.broker_user
    if a.agent_token_env:
        Handler.agent_token = os.environ[a.agent_token_env]
        Handler.agent_user = a.agent_user
        Handler.agent_can_write = a.agent_can_write
    if a.audit_log:
        Handler.audit_file = open(a.audit_log, "a", buffering=1)
    # kubectl checks that the namespace of a namespaced command exists.
    for ns in ("default", "kube-system", "shop", "locked"):
        STORE.objects[("", "namespaces", None, ns)] = {
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": ns, "uid": str(uuid.uuid4()), "resourceVersion": STORE.next_rv(),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Active"}}
    STORE.objects[("", "serviceaccounts", "shop", "deployer")] = {
        "kind": "ServiceAccount", "apiVersion": "v1",
        "metadata": {"name": "deployer", "namespace": "shop", "uid": str(uuid.uuid4()),
                     "resourceVersion": STORE.next_rv(), "creationTimestamp": "2026-01-01T00:00:00Z"}}
    Handler.log_file = open(a.log, "a", buffering=1)
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.rename(a.port_file + ".tmp", a.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
