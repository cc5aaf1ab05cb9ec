#!/usr/bin/env bash
# Generates the inputs of `just bench-check` into target/bench-check/ (idempotent):
# - pods-1000.yaml: 1,000 Pods of 3 containers each, as `kubectl get -o yaml` writes them
#   (block style, labels, resources); a third of them use an untrusted image.
# - stream-50mb.yaml: examples/workloads/api-deployment.yaml repeated 80,802 times with `---`
#   (about 50 MB, the stream of the Engine section of BENCHMARKS.md).
# - stream-1gb.yaml: stream-50mb.yaml 20 times (1.04 GB, 1,616,040 Deployments), to show that
#   `check` reads it in the memory of the 50 MB one. Delete it when disk is short; it is
#   written again on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-check
mkdir -p "$out"

if [[ ! -s $out/pods-1000.yaml ]]; then
  for i in $(seq 1 1000); do
    if (( i % 3 == 0 )); then app="docker.io/library/nginx:1.25"; else app="registry.my.com/team/app-$i:1.$i.0"; fi
    cat <<POD
---
apiVersion: v1
kind: Pod
metadata:
  name: app-$i
  namespace: team-$(( i % 10 ))
  labels:
    app.kubernetes.io/name: app-$i
    app.kubernetes.io/part-of: shop
spec:
  containers:
  - name: app
    image: $app
    ports:
    - containerPort: 8080
      protocol: TCP
    resources:
      limits:
        cpu: 500m
        memory: 256Mi
  - name: proxy
    image: ghcr.io/my-org/envoy:1.30.$i
    args: ["--config", "/etc/envoy/envoy.yaml"]
  - name: metrics
    image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/metrics-agent:0.9
    env:
    - name: NODE
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
  restartPolicy: Always
POD
  done > "$out/pods-1000.yaml"
fi

if [[ ! -s $out/stream-50mb.yaml ]]; then
  doc=$(cat examples/workloads/api-deployment.yaml)
  # 80,802 copies = 3 * 26,934: write 26,934 and triple the file.
  for _ in $(seq 1 26934); do printf -- '---\n%s\n' "$doc"; done > "$out/part.yaml"
  cat "$out/part.yaml" "$out/part.yaml" "$out/part.yaml" > "$out/stream-50mb.yaml"
  rm "$out/part.yaml"
fi
if [[ ! -s $out/stream-1gb.yaml ]]; then
  for _ in $(seq 1 20); do cat "$out/stream-50mb.yaml"; done > "$out/stream-1gb.yaml"
fi
ls -l "$out"
