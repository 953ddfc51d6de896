#!/usr/bin/env python3
"""Writes a large manifest file for policy-test's memory measurement (docs/performance.md).

usage: big_list.py OUT BYTES [json|yaml|yaml-small]

json: one `kind: List` JSON document (500 namespaces, 500 pods, NetworkPolicies up to BYTES).
yaml: the same objects as one YAML document each (flow style, `---` separated).
yaml-small: block-style YAML documents of about 250 bytes each (Namespaces and small
NetworkPolicies), so 50 MB holds about 200,000 documents.
"""
import json
import sys

out, target = sys.argv[1], int(sys.argv[2])
fmt = sys.argv[3] if len(sys.argv) > 3 else "json"
NS = 500

if fmt == "yaml-small":
    with open(out, "w") as f:
        size, i = 0, 0
        for n in range(NS):
            s = f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n"
            f.write(s)
            size += len(s)
        while size < target:
            s = (f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n"
                 f"  name: p-{i}\n  namespace: ns-{i % NS}\nspec:\n  podSelector:\n"
                 f"    matchLabels: {{app: web}}\n  ingress:\n  - ports:\n"
                 f"    - {{protocol: TCP, port: {1 + i % 60000}}}\n")
            f.write(s)
            size += len(s)
            i += 1
    print(i + NS, "documents")
    sys.exit(0)

items, size, i = [], 0, 0
for n in range(NS):
    items.append({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": f"ns-{n}", "labels": {"team": f"t{n % 50}"}}})
for n in range(NS):
    items.append({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "web-0", "namespace": f"ns-{n}",
                               "labels": {"app": "web", "tier": "frontend"}},
                  "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                  "status": {"podIP": f"10.{n // 250}.{n % 250}.5"}})
while size < target:
    p = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": f"allow-{i}", "namespace": f"ns-{i % NS}", "labels": {"generated": "true"}},
         "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                  "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{i % 50}"}},
                                         "podSelector": {"matchLabels": {"tier": "frontend"}}},
                                        {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                               "ports": [{"protocol": "TCP", "port": 8000 + i % 1000}]}]}}
    items.append(p)
    size += len(json.dumps(p)) + 2
    i += 1
with open(out, "w") as f:
    if fmt == "json":
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
    else:
        for it in items:
            f.write("---\n" + json.dumps(it) + "\n")
print(len(items), "documents")
