#!/usr/bin/env python3
"""Checks on the chart's rendered output that no generic linter makes.

Run by .ci/chart.sh with the venv's python (PyYAML and jsonschema come with
kubernetes-validate). For each rendered case it asserts the contract of SPEC sections 4 and 7:
the webhook routes every kind to us, can never select its own namespace or kube-system, and
uses a consistent CA; the Deployment, Service and RBAC are what the binary expects; and every
TrustedRegistryPolicy the chart renders (kubernetes-validate has no schema for it) validates
against the CRD's own openAPIV3Schema; the PrometheusRule validates against the
prometheus-operator CRD's schema and carries the alerts of issue 11, and the alerts and the
Grafana dashboard query only metrics trustgate serves (.ci/known-metrics.txt).
"""

import argparse
import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import yaml

SPEC_RULES = {
    # (apiGroup, resource) pairs of SPEC section 4.
    ("", "pods"),
    ("", "pods/ephemeralcontainers"),
    ("", "podtemplates"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
}

CLUSTER_ROLE_RULES = {
    # (apiGroup, resource, verb): exactly these, nothing more.
    *{("trustgate.dev", "trustedregistrypolicies", v) for v in ("get", "list", "watch")},
    *{("trustgate.dev", "trustedregistrypolicies/status", v) for v in ("patch", "update")},
    *{("", "namespaces", v) for v in ("get", "list", "watch")},
    *{("", r, "list") for r in ("pods", "podtemplates", "replicationcontrollers")},
    *{("apps", r, "list") for r in ("deployments", "replicasets", "statefulsets", "daemonsets")},
    *{("batch", r, "list") for r in ("jobs", "cronjobs")},
}
POLICY_REPORT_RULES = {("wgpolicyk8s.io", "policyreports", v)
                       for v in ("get", "list", "watch", "create", "update", "patch", "delete")}
LEASE_VERBS = {"get", "create", "update", "patch"}

# The alerts the PrometheusRule must carry (issue 11), each with summary and description.
REQUIRED_ALERTS = {
    "TrustgateWebhookUnavailable",
    "TrustgateAdmissionErrors",
    "TrustgateAdmissionLatencyHigh",
    "TrustgatePolicyNotReady",
    "TrustgateAuditViolationsRising",
    "TrustgateCertificateExpiring",
}
SEVERITIES = {"critical", "warning", "info"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                "and", "or", "unless", "inf", "nan"}


class Failures:
    def __init__(self):
        self.items = []

    def check(self, ok, case, message):
        if not ok:
            self.items.append(f"{case}: {message}")
        return ok



def quantity(text):
    """Bytes of a Kubernetes binary quantity (the chart writes Ki, Mi, Gi or plain bytes)."""
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30)):
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)

def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(docs, kind, case, fails):
    found = [d for d in docs if d.get("kind") == kind]
    fails.check(len(found) == 1, case, f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else None


def openapi_to_jsonschema(node):
    """A CRD's structural OpenAPI v3 schema -> JSON schema with the API server's semantics.

    `nullable` and int-or-string have no JSON-schema spelling; and an object with `properties`
    is closed unless it says x-kubernetes-preserve-unknown-fields (the API server prunes
    unknown fields, and kubectl's strict field validation rejects them).
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if isinstance(out.get("pattern"), str):
        # RE2 (the API server's) takes inline flags anywhere; Python only at the very start.
        out["pattern"] = re.sub(r"^\^\(\?([imsu]+)\)", r"(?\1)^", out["pattern"])
    return out


# The CEL subset the CRD's x-kubernetes-validations use on strings: `self.matches(re)` and
# `self.contains(s)`, each optionally negated, joined by `&&`. CEL's matches() is an unanchored
# RE2 search, like Python's re.search for these patterns. Rules outside the subset are reported
# as not checked (the API server still enforces them).
CEL_TERM = re.compile(r"""^(!?)self\.(matches|contains)\((r?)'((?:[^'\\]|\\.)*)'\)$""")


def compile_cel(rule):
    terms = []
    for term in rule.split("&&"):
        m = CEL_TERM.match(term.strip())
        if not m:
            return None
        negate, func, raw, arg = m.groups()
        if not raw:
            arg = arg.encode().decode("unicode_escape")
        terms.append((negate == "!", func, re.compile(arg) if func == "matches" else arg))

    def holds(value):
        for negate, func, arg in terms:
            result = bool(arg.search(value)) if func == "matches" else arg in value
            if result == negate:
                return False
        return True

    return holds


def cel_rules(schema, path=()):
    """(json path pattern, compiled rule or None, rule dict) for every x-kubernetes-validations entry."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, compile_cel(rule["rule"]), rule
    for name, sub in (schema.get("properties") or {}).items():
        yield from cel_rules(sub, path + (name,))
    if isinstance(schema.get("items"), dict):
        yield from cel_rules(schema["items"], path + ("[]",))


def values_at(doc, path):
    if not path:
        yield (), doc
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        for i, item in enumerate(doc if isinstance(doc, list) else []):
            for sub_path, value in values_at(item, rest):
                yield (i,) + sub_path, value
    elif isinstance(doc, dict) and head in doc:
        for sub_path, value in values_at(doc[head], rest):
            yield (head,) + sub_path, value


class CrdValidator:
    def __init__(self, crd_path):
        crd = next(d for d in load_docs(crd_path) if d.get("kind") == "CustomResourceDefinition")
        spec = crd["spec"]
        self.group = spec["group"]
        self.kind = spec["names"]["kind"]
        self.schemas = {}
        self.unchecked_rules = set()
        for version in spec["versions"]:
            if not version.get("served"):
                continue
            openapi = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # The API server implies these at the root of every custom resource.
            root = openapi.setdefault("properties", {})
            root.setdefault("apiVersion", {"type": "string"})
            root.setdefault("kind", {"type": "string"})
            root.setdefault("metadata", {"type": "object"})
            schema = openapi_to_jsonschema(openapi)
            jsonschema.Draft4Validator.check_schema(schema)
            validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
            self.schemas[f"{self.group}/{version['name']}"] = (validator, list(cel_rules(openapi)))

    def validate(self, doc, where, case, fails):
        entry = self.schemas.get(doc.get("apiVersion"))
        if not fails.check(entry is not None, case,
                           f"{where}: apiVersion {doc.get('apiVersion')} is not served by the CRD"):
            return
        validator, rules = entry
        fails.check(doc.get("kind") == self.kind, case, f"{where}: kind {doc.get('kind')} is not {self.kind}")
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in error.absolute_path) or "<root>"
            fails.check(False, case, f"{where}: {path}: {error.message}")
        for path, holds, rule in rules:
            if holds is None:
                self.unchecked_rules.add(rule["rule"])
                continue
            for value_path, value in values_at(doc, path):
                if isinstance(value, str) and not holds(value):
                    field = ".".join(str(p) for p in value_path)
                    message = rule.get("message") or rule.get("messageExpression") or rule["rule"]
                    fails.check(False, case, f"{where}: {field}: {value!r} breaks CEL rule: {message}")


def policies_in(docs, kind):
    """TrustedRegistryPolicies rendered as objects, or inside the file-source ConfigMap."""
    for doc in docs:
        if doc.get("kind") == kind:
            yield f"{kind}/{doc['metadata']['name']}", doc
        elif doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].endswith("-policies"):
            for key, text in (doc.get("data") or {}).items():
                for inner in yaml.safe_load_all(text):
                    if inner:
                        yield f"ConfigMap/{doc['metadata']['name']}[{key}]", inner


def check_webhook(docs, case, namespace, expect_kube_system, fails):
    vwc = one(docs, "ValidatingWebhookConfiguration", case, fails)
    service = one(docs, "Service", case, fails)
    deployment = one(docs, "Deployment", case, fails)
    if not (vwc and service and deployment):
        return
    hooks = vwc.get("webhooks", [])
    if not fails.check(len(hooks) == 1, case, f"expected one webhook, found {len(hooks)}"):
        return
    hook = hooks[0]
    fails.check(hook.get("name") == "validate.trustgate.dev", case, f"webhook name {hook.get('name')}")
    fails.check(hook.get("sideEffects") == "None", case, "sideEffects must be None")
    fails.check(hook.get("admissionReviewVersions") == ["v1"], case, "admissionReviewVersions must be [v1]")
    fails.check(hook.get("matchPolicy") == "Equivalent", case, "matchPolicy must be Equivalent")
    fails.check(hook.get("failurePolicy") in ("Fail", "Ignore"), case, "failurePolicy must be Fail or Ignore")
    fails.check(1 <= hook.get("timeoutSeconds", 0) <= 30, case, "timeoutSeconds must be 1..30")
    fails.check("objectSelector" not in hook, case, "no objectSelector: a workload owner could label around it")

    svc = hook.get("clientConfig", {}).get("service", {})
    fails.check(
        svc == {"name": service["metadata"]["name"], "namespace": namespace, "path": "/validate", "port": 443},
        case, f"clientConfig.service is {svc}",
    )

    covered = set()
    for rule in hook.get("rules", []):
        ops = set(rule.get("operations", []))
        versions = set(rule.get("apiVersions", []))
        if {"CREATE", "UPDATE"} <= ops and versions & {"v1", "*"} and rule.get("scope") in ("Namespaced", "*"):
            covered |= {(g, r) for g in rule.get("apiGroups", []) for r in rule.get("resources", [])}
    missing = sorted(SPEC_RULES - covered)
    fails.check(not missing, case, f"webhook rules miss CREATE+UPDATE on {missing}")

    selector = hook.get("namespaceSelector", {})
    exprs = selector.get("matchExpressions", [])
    fails.check(set(selector) == {"matchExpressions"} and len(exprs) == 1, case,
                f"namespaceSelector must be one matchExpressions entry, got {selector}")
    if exprs:
        expr = exprs[0]
        fails.check(expr.get("key") == "kubernetes.io/metadata.name" and expr.get("operator") == "NotIn",
                    case, f"namespaceSelector must be kubernetes.io/metadata.name NotIn, got {expr}")
        excluded = set(expr.get("values", []))
        fails.check(namespace in excluded, case, f"release namespace {namespace} not excluded: {sorted(excluded)}")
        if expect_kube_system:
            fails.check("kube-system" in excluded, case, f"kube-system not excluded: {sorted(excluded)}")

    # Certificates: the webhook must trust whatever signs the certificate the Pods serve.
    tls_secret = next(
        (v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"),
        None,
    )
    annotations = vwc["metadata"].get("annotations") or {}
    inject = annotations.get("cert-manager.io/inject-ca-from")
    ca_bundle = hook.get("clientConfig", {}).get("caBundle")
    if inject:
        fails.check(not ca_bundle, case, "caBundle must be left to cert-manager's cainjector")
        certs = {f"{c['metadata']['namespace']}/{c['metadata']['name']}": c
                 for c in docs if c.get("kind") == "Certificate"}
        cert = certs.get(inject)
        if fails.check(cert is not None, case, f"inject-ca-from names {inject}, which is not rendered"):
            fails.check(cert["spec"]["secretName"] == tls_secret, case,
                        f"Certificate writes {cert['spec']['secretName']}, Pods mount {tls_secret}")
            names = set(cert["spec"].get("dnsNames", []))
            want = f"{service['metadata']['name']}.{namespace}.svc"
            fails.check(want in names, case, f"Certificate dnsNames {sorted(names)} lack {want}")
    else:
        if not fails.check(bool(ca_bundle), case, "caBundle missing (and no cert-manager injection)"):
            return
        pem = base64.b64decode(ca_bundle).decode()
        fails.check("-----BEGIN CERTIFICATE-----" in pem, case, "caBundle is not base64 PEM")
        secrets = [d for d in docs if d.get("kind") == "Secret" and d["metadata"]["name"] == tls_secret]
        if secrets:  # mode auto: the chart made both halves, they must agree
            data = secrets[0]["data"]
            fails.check(data["ca.crt"] == ca_bundle, case, "Secret ca.crt differs from the webhook caBundle")
            verify_serving_cert(data, f"{service['metadata']['name']}.{namespace}.svc", case, fails)


def verify_serving_cert(data, dns_name, case, fails):
    """The generated serving certificate chains to the CA and names the Service."""
    openssl = shutil.which("openssl")
    if not openssl:
        print(f"[chart] {case}: openssl not found, serving certificate not verified", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for key in ("ca.crt", "tls.crt"):
            with open(os.path.join(tmp, key), "wb") as f:
                f.write(base64.b64decode(data[key]))
        ca, crt = os.path.join(tmp, "ca.crt"), os.path.join(tmp, "tls.crt")
        run = subprocess.run([openssl, "verify", "-CAfile", ca, "-purpose", "sslserver", crt],
                             check=False, capture_output=True, text=True)
        fails.check(run.returncode == 0, case, f"serving certificate does not verify: {run.stdout}{run.stderr}")
        run = subprocess.run([openssl, "x509", "-in", crt, "-noout", "-ext", "subjectAltName"],
                             check=False, capture_output=True, text=True)
        fails.check(f"DNS:{dns_name}" in run.stdout, case, f"serving certificate lacks DNS:{dns_name}: {run.stdout}")


def check_workload(docs, case, namespace, fails):
    deployment = one(docs, "Deployment", case, fails)
    service = one(docs, "Service", case, fails)
    if not (deployment and service):
        return
    fullname = service["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    if not fails.check(len(containers) == 1, case, "one container expected"):
        return
    c = containers[0]
    args = c.get("args", [])
    kubernetes_source = "--policy-source=kubernetes" in args
    for want in ("--addr=0.0.0.0:8443", "--admin-addr=0.0.0.0:8080",
                 "--tls-cert=/etc/trustgate/tls/tls.crt", "--tls-key=/etc/trustgate/tls/tls.key"):
        fails.check(want in args, case, f"container args lack {want}: {args}")
    fails.check(args[:1] == ["serve"], case, f"first arg must be serve: {args}")
    if kubernetes_source:
        fails.check(f"--lease-name={fullname}-leader" in args, case, f"--lease-name must be {fullname}-leader")
        fails.check(any(a.startswith("--audit-interval=") for a in args), case, "--audit-interval missing")
        fails.check(pod.get("automountServiceAccountToken") is True, case, "kubernetes source needs the token")
    else:
        fails.check(any(a.startswith("--policy-file=") for a in args), case, "neither policy source configured")
        fails.check(pod.get("automountServiceAccountToken") is False, case, "file source must not mount a token")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
    fails.check(env.get("POD_NAME") == "metadata.name" and env.get("POD_NAMESPACE") == "metadata.namespace",
                case, f"POD_NAME/POD_NAMESPACE must come from the downward API: {env}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    fails.check(ports == {"https": 8443, "admin": 8080}, case, f"container ports {ports}")
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        fails.check(get == {"path": path, "port": "admin"}, case, f"{probe} must GET {path} on admin: {get}")
    # On SIGTERM the server keeps accepting for --shutdown-delay while it sends clients to the
    # other replicas, then drains within --drain-grace: both must fit in the grace period.
    seconds = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith(("--shutdown-delay=", "--drain-grace="))}
    delay = int(seconds.get("--shutdown-delay", "0s").rstrip("s"))
    drain = int(seconds.get("--drain-grace", "25s").rstrip("s"))
    fails.check(0 < delay <= 60, case, f"--shutdown-delay must delay closing the listener (got {delay})")
    fails.check("lifecycle" not in c, case, "no preStop hook: the server delays its own shutdown")
    fails.check(pod.get("terminationGracePeriodSeconds", 30) >= delay + drain + 5, case,
                "terminationGracePeriodSeconds must cover --shutdown-delay plus --drain-grace")
    # The body budget bounds what hostile uploads can make the server hold: it must leave the
    # server its own memory (~30 MiB, plus per-connection buffers) under the container's limit.
    budget = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("--max-body-bytes-")}
    in_flight, per_source = budget.get("--max-body-bytes-in-flight"), budget.get("--max-body-bytes-per-source")
    if fails.check(in_flight and per_source, case, f"the body budget flags are missing: {args}"):
        fails.check(quantity(per_source) <= quantity(in_flight), case, "bodyBudget.perSource exceeds inFlight")
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        if limit:
            fails.check(quantity(in_flight) + 96 * 2**20 <= quantity(limit), case,
                        f"bodyBudget.inFlight {in_flight} leaves under 96Mi of the memory limit {limit}")
    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    fails.check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532, case, "must run as 65532, non-root")
    fails.check(sc.get("readOnlyRootFilesystem") is True, case, "readOnlyRootFilesystem")
    fails.check(sc.get("allowPrivilegeEscalation") is False, case, "allowPrivilegeEscalation false")
    fails.check(sc.get("capabilities", {}).get("drop") == ["ALL"], case, "capabilities drop ALL")
    fails.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", case, "seccomp RuntimeDefault")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    tls = mounts.get("/etc/trustgate/tls", {})
    fails.check(tls.get("readOnly") is True and "subPath" not in tls, case,
                "TLS secret must be mounted read-only as a directory at /etc/trustgate/tls")
    spread = pod.get("topologySpreadConstraints", [])
    fails.check(any(t["topologyKey"] == "kubernetes.io/hostname" for t in spread), case, "no spread across nodes")

    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    fails.check(svc_ports == {"https": (443, "https"), "metrics": (8080, "admin")}, case, f"Service ports {svc_ports}")

    replicas = deployment["spec"]["replicas"]
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    if replicas > 1:
        fails.check(len(pdbs) == 1, case, "a PodDisruptionBudget is expected with more than one replica")

    roles = {d["kind"]: d for d in docs if d.get("kind") in ("ClusterRole", "Role")}
    if kubernetes_source:
        cluster_role = roles.get("ClusterRole")
        if fails.check(cluster_role is not None, case, "ClusterRole missing"):
            granted = {(g, r, v) for rule in cluster_role["rules"] for g in rule["apiGroups"]
                       for r in rule["resources"] for v in rule["verbs"]}
            fails.check(not any(rule.get("nonResourceURLs") for rule in cluster_role["rules"]), case,
                        "ClusterRole must not grant nonResourceURLs")
            # PolicyReports are written only when the binary is told to: the grant follows the flag.
            want = CLUSTER_ROLE_RULES | (POLICY_REPORT_RULES if "--policy-reports" in args else set())
            fails.check(granted == want, case,
                        f"ClusterRole grants extra {sorted(granted - want)}, lacks {sorted(want - granted)}")
        role = roles.get("Role")
        if fails.check(role is not None, case, "leader-election Role missing"):
            fails.check(role["metadata"]["namespace"] == namespace, case, "Role must be in the release namespace")
            for rule in role["rules"]:
                fails.check(rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
                            and set(rule["verbs"]) <= LEASE_VERBS, case, f"Role grants more than leases: {rule}")
    else:
        fails.check(not roles, case, "the file policy source needs no RBAC")
        fails.check("--policy-reports" not in args, case, "--policy-reports needs the kubernetes source")


class KnownMetrics:
    """The series names the dashboard and the alerts may query (.ci/known-metrics.txt)."""

    SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",), "prometheus": ("",)}

    def __init__(self, path):
        self.names = set()
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line:
                    name, kind = line.split()
                    self.names |= {name + suffix for suffix in self.SUFFIXES[kind]}


def promql_metrics(expr):
    """Metric names an expression selects: identifiers that are not functions, keywords, label
    names (inside braces or by/without/on/ignoring lists), durations, numbers or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def check_metric_names(exprs, known, where, case, fails):
    fails.check(bool(exprs), case, f"{where}: no expressions found")
    for expr in exprs:
        names = promql_metrics(expr)
        fails.check(bool(names), case, f"{where}: expression names no metric: {expr}")
        unknown = sorted(names - known.names)
        fails.check(not unknown, case, f"{where}: unknown metrics {unknown} in: {expr}")


def check_prometheus_rule(docs, case, namespace, rule_crd, known, fails):
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if not rules:
        return False
    vwc = next((d for d in docs if d.get("kind") == "ValidatingWebhookConfiguration"), None)
    timeout = vwc["webhooks"][0]["timeoutSeconds"] if vwc else None
    for doc in rules:
        where = f"PrometheusRule/{doc['metadata']['name']}"
        fails.check(doc["metadata"].get("namespace") == namespace, case, f"{where}: not in {namespace}")
        rule_crd.validate(doc, where, case, fails)
        alerts = {}
        for group in doc.get("spec", {}).get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                alerts[name] = rule
                annotations = rule.get("annotations") or {}
                for key in ("summary", "description"):
                    fails.check(bool(str(annotations.get(key, "")).strip()), case, f"{where}: {name} lacks {key}")
                fails.check(bool(rule.get("for")), case, f"{where}: {name} has no for:")
                severity = (rule.get("labels") or {}).get("severity")
                fails.check(severity in SEVERITIES, case, f"{where}: {name} severity {severity!r}")
        missing = sorted(REQUIRED_ALERTS - set(alerts))
        fails.check(not missing, case, f"{where}: missing alerts {missing}")
        check_metric_names([str(r.get("expr", "")) for r in alerts.values()], known, where, case, fails)
        latency = alerts.get("TrustgateAdmissionLatencyHigh")
        if latency and timeout:
            # The budget must leave the API server's timeout room for the network and TLS.
            m = re.search(r"\)\s*>\s*([0-9.]+)\s*$", str(latency.get("expr", "")))
            if fails.check(m is not None, case, f"{where}: latency alert has no '> SECONDS' threshold"):
                budget = float(m.group(1))
                fails.check(0 < budget <= timeout, case,
                            f"{where}: p99 budget {budget}s is not within the webhook timeout {timeout}s")
    return True


def check_dashboard(docs, case, known, fails):
    """ConfigMaps labelled for the Grafana sidecar hold dashboards whose queries name real metrics."""
    found = False
    for doc in docs:
        if doc.get("kind") != "ConfigMap" or not doc["metadata"]["name"].endswith("-dashboard"):
            continue
        found = True
        where = f"ConfigMap/{doc['metadata']['name']}"
        labels = doc["metadata"].get("labels") or {}
        fails.check(any(k for k in labels if "dashboard" in k), case, f"{where}: no Grafana sidecar label: {labels}")
        for key, text in (doc.get("data") or {}).items():
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as e:
                fails.check(False, case, f"{where}[{key}]: not JSON: {e}")
                continue
            panels = list(walk_panels(dashboard.get("panels", [])))
            ids = [p.get("id") for p in panels]
            fails.check(len(ids) == len(set(ids)), case, f"{where}[{key}]: duplicate panel ids")
            fails.check(bool(dashboard.get("uid")) and bool(dashboard.get("title")), case,
                        f"{where}[{key}]: dashboard needs a uid and a title")
            exprs = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
            for var in dashboard.get("templating", {}).get("list", []):
                query = var.get("query")
                if isinstance(query, dict):
                    query = query.get("query")
                if var.get("type") == "query" and query:
                    exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
            check_metric_names(exprs, known, f"{where}[{key}]", case, fails)
    return found


def walk_panels(panels):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crd", required=True, help="the chart's CRD file")
    parser.add_argument("--case", nargs=4, action="append", required=True,
                        metavar=("RENDERED", "NAMESPACE", "KUBE_SYSTEM", "MIN_POLICIES"),
                        help="rendered manifest, release namespace, whether kube-system must be "
                             "excluded (yes/no), how many TrustedRegistryPolicies it must contain")
    parser.add_argument("--rule-crd", required=True, help="the PrometheusRule CRD (.ci/schemas)")
    parser.add_argument("--known-metrics", required=True, help="metric families trustgate serves")
    parser.add_argument("--require-monitoring", action="append", default=[], metavar="RENDERED",
                        help="a rendered case that must contain the PrometheusRule and the dashboard")
    args = parser.parse_args()

    crd = CrdValidator(args.crd)
    rule_crd = CrdValidator(args.rule_crd)
    known = KnownMetrics(args.known_metrics)
    fails = Failures()
    validated = 0
    for rendered, namespace, kube_system, min_policies in args.case:
        case = os.path.basename(rendered)
        docs = load_docs(rendered)
        check_webhook(docs, case, namespace, kube_system == "yes", fails)
        check_workload(docs, case, namespace, fails)
        policies = list(policies_in(docs, crd.kind))
        fails.check(len(policies) >= int(min_policies), case,
                    f"expected at least {min_policies} TrustedRegistryPolicy, rendered {len(policies)}")
        for where, doc in policies:
            crd.validate(doc, where, case, fails)
            validated += 1
        has_rule = check_prometheus_rule(docs, case, namespace, rule_crd, known, fails)
        has_dashboard = check_dashboard(docs, case, known, fails)
        if rendered in args.require_monitoring:
            fails.check(has_rule, case, "no PrometheusRule rendered")
            fails.check(has_dashboard, case, "no Grafana dashboard ConfigMap rendered")

    for rule in sorted(crd.unchecked_rules):
        print(f"[chart] note: CEL rule not evaluated here (the API server enforces it): {rule}", file=sys.stderr)
    if fails.items:
        for item in fails.items:
            print(f"FAIL {item}", file=sys.stderr)
        sys.exit(1)
    print(f"[chart] {len(args.case)} rendered cases pass the webhook, workload and RBAC assertions; "
          f"{validated} TrustedRegistryPolicy objects validate against the CRD schema")


if __name__ == "__main__":
    main()
