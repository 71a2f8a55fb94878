#!/usr/bin/env bash
# Runs seb's whole test suite on a fresh machine: installs what the tests need (Debian and
# PyPI packages), then `cargo test`. Every test starts its own processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
command -v prlimit >/dev/null || need_apt+=(util-linux)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
# The replica tests start etcd members; the etcd-client crate compiles etcd's protobufs.
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "test: installing ${need_apt[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, re, sys
for line in open("tests/requirements.txt"):
    name = re.split(r"[<>=\[ ]", line.strip(), maxsplit=1)[0]
    if name and not line.startswith("#"):
        m.version(name)
PY
then
  echo "test: installing Python packages from tests/requirements.txt"
  python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi

cargo test --locked --all-targets "$@"
