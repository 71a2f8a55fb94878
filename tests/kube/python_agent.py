#!/usr/bin/env python3
"""The official Python `kubernetes` client as an agent, unchanged, for seb's end-to-end tests.

Usage:
  python_agent.py KUBECONFIG scale NAMESPACE NAME REPLICAS
  python_agent.py KUBECONFIG set-image NAMESPACE NAME CONTAINER IMAGE
  python_agent.py KUBECONFIG list NAMESPACE
  python_agent.py KUBECONFIG watch NAMESPACE COUNT

Prints a JSON result on stdout. An API error prints {"status": CODE, "body": BODY} and exits 3.
"""
import json
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main():
    kubeconfig, action, ns = sys.argv[1], sys.argv[2], sys.argv[3]
    config.load_kube_config(config_file=kubeconfig)
    apps = client.AppsV1Api()
    try:
        if action == "scale":
            name, replicas = sys.argv[4], int(sys.argv[5])
            r = apps.patch_namespaced_deployment_scale(
                name, ns, {"spec": {"replicas": replicas}}, _content_type="application/merge-patch+json")
            out = {"replicas": r.spec.replicas}
        elif action == "set-image":
            name, container, image = sys.argv[4], sys.argv[5], sys.argv[6]
            body = {"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}
            r = apps.patch_namespaced_deployment(
                name, ns, body, _content_type="application/strategic-merge-patch+json")
            out = {"images": [c.image for c in r.spec.template.spec.containers]}
        elif action == "list":
            out = {"names": [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]}
        elif action == "watch":
            count, events = int(sys.argv[4]), []
            w = watch.Watch()
            for ev in w.stream(apps.list_namespaced_deployment, ns, timeout_seconds=20):
                events.append([ev["type"], ev["object"].metadata.name, ev["object"].spec.replicas])
                print(json.dumps(events[-1]), flush=True)
                if len(events) >= count:
                    w.stop()
            out = {"events": events}
        else:
            raise SystemExit(f"unknown action {action}")
    except ApiException as e:
        print(json.dumps({"status": e.status, "body": e.body if isinstance(e.body, str) else str(e.body)}))
        return 3
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
