#!/usr/bin/env python3
"""Offline checks of the Helm chart helm/tether.

Run through scripts/check-helm, which installs what this needs:
helm-python-sdk (Helm v4's Go library, bundled as libhelm_c.so and called
through ctypes: no helm binary, no cluster, no network) and
kubernetes-validate (Kubernetes JSON schemas, shipped in the package).

What it does:
  - lints the chart strictly (helm lint --strict) with the default values and
    with every file in helm/tether/ci/;
  - renders it (helm template) with the default values, with
    ci/sidecar-values.yaml, with ci/servicemonitor-values.yaml and with a few
    more value sets, and validates every rendered document against the
    Kubernetes schemas (strict: unknown fields fail); the ServiceMonitor is a
    CRD, so its fields are asserted instead;
  - asserts what matters: ports, probes, the journal PVC and its mount, the
    token Secret wiring, the rendered tether.toml (it must parse and carry
    exactly the keys of config/tether.toml), the PDB, the non-root
    securityContext, the shutdown timing;
  - renders a parent chart built from the sidecar snippet in the chart README
    (so the documented snippet is checked too);
  - checks that values tether would reject make the render fail;
  - the monitoring objects: the PrometheusRule carries exactly the rule groups
    of files/prometheus/tether-rules.yaml (with the disk budget from the
    values), the dashboard ConfigMap exactly files/grafana/tether-dashboard.json
    with the sidecar's label, and the default image is the one the Dockerfile
    builds (its user, volume and ports match the chart's).

Prints one line per check and `check-helm: N passed, M failed`; exits 1 on
any failure.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import helm_python as helm
import kubernetes_validate
import yaml
from helm_python import _native
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tether"
TETHER_TOML = ROOT / "config" / "tether.toml"
RELEASE = "tether"
NAMESPACE = "tether"
# Kubernetes versions whose schemas every rendered document must satisfy: the
# oldest we aim at and the newest kubernetes-validate ships.
WANTED_KUBE = "1.29.0"
# Kinds that are CRDs: no schema in kubernetes-validate, fields asserted below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
RULES_FILE = CHART / "files" / "prometheus" / "tether-rules.yaml"
DASHBOARD_FILE = CHART / "files" / "grafana" / "tether-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"


# --- reporting --------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return ok

    def eq(self, name: str, got: Any, want: Any) -> bool:
        return self.check(name, got == want, f"got {got!r}, want {want!r}")

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Runs fn; an exception is one failed check."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - report, carry on
            self.check(name, False, f"{type(e).__name__}: {e}")
            if "-v" in sys.argv:
                traceback.print_exc()
            return None


R = Results()


# --- helm -------------------------------------------------------------------


def load_values(path: Path) -> dict[str, Any]:
    """Parses a values file the way helm -f does."""
    return helm.values_from_yaml(path.read_text())


def render(
    chart_dir: Path,
    values: dict[str, Any] | None = None,
    *,
    kube_version: str = "v" + WANTED_KUBE,
    api_versions: list[str] | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """helm template: {template path: rendered text}.

    Chart.render() in helm-python-sdk 0.2.2 takes name/namespace/revision/
    is_install/is_upgrade; the native helm_render also accepts kube_version and
    api_versions (like --kube-version and --api-versions), which Chart.render
    does not expose, so this calls it directly.
    """
    opts: dict[str, Any] = {
        "name": release,
        "namespace": namespace,
        "is_install": True,
        "kube_version": kube_version,
    }
    if api_versions:
        opts["api_versions"] = api_versions
    with helm.Chart.load(str(chart_dir)) as chart:
        out = _native.call_string(
            "helm_render",
            chart._raw(),
            None if values is None else json.dumps(values),
            json.dumps(opts),
        )
    rendered: dict[str, str] = json.loads(out)
    return rendered


def documents(rendered: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Every non-empty YAML document of the rendered manifests (NOTES excluded)."""
    docs = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                docs.append((path, doc))
    return docs


@contextlib.contextmanager
def quiet_stderr():
    """Silences what the Go library logs to fd 2 (coalesce warnings on values
    that are meant to be rejected); errors still come back as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def notes(rendered: dict[str, str]) -> str:
    return next((v for k, v in rendered.items() if k.endswith("/NOTES.txt")), "")


# --- kubernetes-validate ----------------------------------------------------


def kube_versions() -> list[str]:
    have = kv_utils.all_versions()
    want = [v for v in have if kv_utils.major_minor(v) == kv_utils.major_minor(WANTED_KUBE)]
    picked = want[:1] or have[:1]
    if have[-1] not in picked:
        picked.append(have[-1])
    return picked


KUBE_VERSIONS: list[str] = []


def validate_all(label: str, docs: list[tuple[str, dict[str, Any]]]) -> None:
    seen: set[tuple[str, str]] = set()
    for path, doc in docs:
        kind = doc.get("kind", "?")
        name = (doc.get("metadata") or {}).get("name", "?")
        ident = f"{label}: {kind}/{name}"
        R.check(f"{ident} has apiVersion, kind, metadata.name",
                bool(doc.get("apiVersion") and doc.get("kind") and name != "?"))
        key = (kind, name)
        R.check(f"{ident} is unique", key not in seen)
        seen.add(key)
        if kind in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                R.check(f"{ident} valid against Kubernetes {kv_utils.major_minor(version)} (strict)", True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                R.check(f"{ident} valid against Kubernetes {kv_utils.major_minor(version)} (strict)",
                        False, f"{where}: {e.message}")
            except kv_utils.SchemaNotFoundError as e:
                R.check(f"{ident} has a schema", False, e.message)


# --- helpers over rendered objects -----------------------------------------


def by_kind(docs: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [d for _, d in docs if d.get("kind") == kind]


def one(docs: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, found {len(found)}")
    return found[0]


def container(pod_spec: dict[str, Any], name: str = "tether") -> dict[str, Any]:
    for c in pod_spec.get("containers", []):
        if c.get("name") == name:
            return c
    raise AssertionError(f"no container named {name}")


def port_number(c: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or re.sub(r"(\d+)\s*([a-z]+)|\s", "", text):
        raise ValueError(f"cannot read duration {text!r}")
    for n, unit in parts:
        total += int(n) * units[{"sec": "s", "secs": "s", "min": "m", "mins": "m"}.get(unit, unit)]
    return total


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_env(docs: list[tuple[str, dict[str, Any]]], cm_name: str) -> dict[str, str]:
    """The TETHER_* environment of the first pod (ordinal 0) that mounts the
    ConfigMap cm_name, resolved as the kubelet would: literal values with
    $(VAR) expanded, the downward API (pod name, pod IP 10.0.0.10) and
    secretKeyRefs (the rendered Secret, or a stand-in for an existing one)."""
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    for d in by_kind(docs, "StatefulSet") + by_kind(docs, "Deployment"):
        pod = d["spec"]["template"]["spec"]
        cms = [(v.get("configMap") or {}).get("name") for v in pod.get("volumes", [])]
        if cm_name not in cms or not any(c["name"] == "tether" for c in pod["containers"]):
            continue
        name = d["metadata"]["name"] + ("-0" if d["kind"] == "StatefulSet" else "-5d9c7b8f4-x2x7q")
        env: dict[str, str] = {}
        for e in container(pod).get("env", []):
            src = e.get("valueFrom") or {}
            if "value" in e:
                value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
            elif "fieldRef" in src:
                value = {"metadata.name": name, "status.podIP": "10.0.0.10"}[src["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                raw = ((secrets.get(ref["name"]) or {}).get("data") or {}).get(ref["key"])
                value = base64.b64decode(raw).decode() if raw else "stand-in-for-an-existing-secret-0123456789"
            else:
                raise AssertionError(f"env {e['name']}: unknown source {src}")
            env[e["name"]] = value
        return env
    return {}


def overlay_env(text: str, env: dict[str, str]) -> str:
    """tether.toml text with TETHER_<SECTION>_<KEY> variables applied, as
    tether applies them (a value that parses as a TOML value is one, else a
    string): each replaces the key's line in its section or is appended to it."""
    sections = re.findall(r"^\[([a-z_.]+)\]$", text, re.M)
    lines = text.splitlines()
    for name, raw in env.items():
        rest = name.removeprefix("TETHER_").lower()
        if rest == name.lower() or "_" not in rest:
            continue
        section, key = rest.split("_", 1)
        if section not in sections:
            continue
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
            literal = raw
        except tomllib.TOMLDecodeError:
            value, literal = raw, json.dumps(raw)
        del value
        start = lines.index(f"[{section}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        for i in range(start + 1, end):
            if re.match(rf"{key}\s*=", lines[i]):
                lines[i] = f"{key} = {literal}"
                break
        else:
            lines.insert(start + 1, f"{key} = {literal}")
    return "\n".join(lines) + "\n"


def toml_of(docs: list[tuple[str, dict[str, Any]]], cm_name: str | None = None, dump: bool = True) -> dict[str, Any]:
    """The parsed tether.toml; also written to CHECK_HELM_DUMP_DIR (unless
    dump is false: a render whose pod is someone else's, so no environment)."""
    cms = [d for d in by_kind(docs, "ConfigMap") if cm_name is None or d["metadata"]["name"] == cm_name]
    if len(cms) != 1:
        raise AssertionError(f"expected one ConfigMap{' ' + cm_name if cm_name else ''}, found {len(cms)}")
    text = cms[0]["data"]["tether.toml"]
    dump_dir = os.environ.get("CHECK_HELM_DUMP_DIR") if dump else None
    if dump_dir:
        # What the first pod runs with: the file plus its TETHER_* variables
        # (token secret, cluster instance or advertised address).
        text_env = overlay_env(text, pod_env(docs, cms[0]["metadata"]["name"]))
        # scripts/test feeds every rendered file to `tether config`, so tether
        # itself confirms it accepts what the chart renders. tether checks
        # that [tls] files exist: the chart's Secret mounts (/etc/tether-tls/...)
        # become empty files under the dump directory, same names.
        mounted = set(re.findall(r'"(/etc/tether-tls/[^"]+)"', text_env))
        for path in mounted:
            local = Path(dump_dir, "tls-files", path.removeprefix("/etc/tether-tls/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch()
        dumped = text_env.replace('"/etc/tether-tls/', f'"{Path(dump_dir, "tls-files")}/')
        Path(dump_dir, f"rendered-{len(list(Path(dump_dir).glob('*.toml')))}.toml").write_text(dumped)
    return tomllib.loads(text)


def check_tether_container(label: str, pod_spec: dict[str, Any], values: dict[str, Any],
                           docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Assertions on the tether container of a pod, in any mode."""
    c = container(pod_spec)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    R.eq(f"{label}: data port", ports.get("tether-data"), values["ports"]["data"])
    R.eq(f"{label}: admin port", ports.get("tether-admin"), values["ports"]["admin"])
    R.eq(f"{label}: command", c.get("command", []) + c.get("args", [])[:2],
         ["tether", "--config", "/etc/tether/tether.toml"])
    R.eq(f"{label}: image", c.get("image"), f"{values['image']['repository']}:{values['image']['tag']}")

    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        R.eq(f"{label}: {probe} path", get.get("path"), path)
        R.eq(f"{label}: {probe} on the admin port", port_number(c, get.get("port")), values["ports"]["admin"])

    # Token secret from a Secret, through TETHER_TOKEN_SECRET.
    env = {e["name"]: e for e in c.get("env", [])}
    ref = ((env.get("TETHER_TOKEN_SECRET") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    R.check(f"{label}: TETHER_TOKEN_SECRET from a secretKeyRef", bool(ref.get("name") and ref.get("key")),
            f"env: {list(env)}")
    existing = values["tokenSecret"]["existingSecret"]
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    if existing:
        R.eq(f"{label}: token from tokenSecret.existingSecret", ref.get("name"), existing)
        R.check(f"{label}: no Secret rendered with existingSecret", existing not in secrets and not secrets,
                f"rendered {list(secrets)}")
    else:
        secret = secrets.get(ref.get("name", ""))
        if R.check(f"{label}: the referenced Secret is rendered", secret is not None,
                   f"{ref.get('name')} not in {list(secrets)}"):
            raw = (secret.get("data") or {}).get(ref.get("key"))
            value = base64.b64decode(raw).decode() if raw else ""
            R.check(f"{label}: the Secret holds the key, >= 32 characters", len(value) >= 32, f"length {len(value)}")
            if values["tokenSecret"]["value"]:
                R.eq(f"{label}: the Secret holds tokenSecret.value", value, values["tokenSecret"]["value"])
            else:
                R.check(f"{label}: the generated Secret is kept on uninstall",
                        (secret["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep")

    # Mounts: config, journal, /tmp.
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    R.eq(f"{label}: config mounted at /etc/tether", (mounts.get("tether-config") or {}).get("mountPath"),
         "/etc/tether")
    R.eq(f"{label}: journal volume mounted at persistence.mountPath",
         (mounts.get("tether-journal") or {}).get("mountPath"), values["persistence"]["mountPath"])
    R.eq(f"{label}: /tmp mounted (read-only root filesystem)", (mounts.get("tether-tmp") or {}).get("mountPath"),
         "/tmp")
    vols = {v["name"]: v for v in pod_spec.get("volumes", [])}
    cm_name = ((vols.get("tether-config") or {}).get("configMap") or {}).get("name")
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    R.check(f"{label}: the config volume is the rendered ConfigMap with tether.toml",
            cm_name in cms and "tether.toml" in cms[cm_name].get("data", {}), f"{cm_name} not in {list(cms)}")
    R.check(f"{label}: /tmp is an emptyDir", "emptyDir" in (vols.get("tether-tmp") or {}))

    # Security.
    sc = c.get("securityContext") or {}
    R.check(f"{label}: container runAsNonRoot", sc.get("runAsNonRoot") is True)
    R.check(f"{label}: container runAsUser is not root", (sc.get("runAsUser") or 0) > 0)
    R.check(f"{label}: readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True)
    R.check(f"{label}: allowPrivilegeEscalation false", sc.get("allowPrivilegeEscalation") is False)
    R.eq(f"{label}: capabilities drop ALL", (sc.get("capabilities") or {}).get("drop"), ["ALL"])
    R.check(f"{label}: resources set", bool((c.get("resources") or {}).get("requests")))

    # Shutdown: preStop sleep, then SIGTERM and a drain of shutdown_grace.
    pre = (c.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        sleep = pre["sleep"].get("seconds", 0)
    else:
        cmd = (pre.get("exec") or {}).get("command") or []
        sleep = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0
    R.check(f"{label}: preStop sleeps before SIGTERM", sleep > 0, f"preStop: {pre}")
    cfg = toml_of(docs, cm_name) if cm_name in cms else {}
    grace = duration_seconds(cfg.get("server", {}).get("shutdown_grace", "20s"))
    tgps = pod_spec.get("terminationGracePeriodSeconds") or 30
    R.check(f"{label}: terminationGracePeriodSeconds > preStop + shutdown_grace",
            tgps > sleep + grace, f"{tgps} <= {sleep} + {grace}")
    R.check(f"{label}: enableServiceLinks false (no TETHER_*_SERVICE_HOST variables)",
            pod_spec.get("enableServiceLinks") is False)
    return c


def check_tether_toml(label: str, cfg: dict[str, Any], values: dict[str, Any], upstream: str) -> None:
    """The rendered tether.toml against config/tether.toml and the values."""
    ref = tomllib.loads(TETHER_TOML.read_text())
    ports, host = values["ports"], values["listenHost"]
    R.eq(f"{label}: server.listen", cfg.get("server", {}).get("listen"), f"{host}:{ports['data']}")
    R.eq(f"{label}: server.admin_listen", cfg.get("server", {}).get("admin_listen"), f"{host}:{ports['admin']}")
    R.eq(f"{label}: server.upstream", cfg.get("server", {}).get("upstream"), upstream)
    R.eq(f"{label}: journal.data_dir on the journal volume", cfg.get("journal", {}).get("data_dir"),
         values["persistence"]["mountPath"].rstrip("/") + "/journal")
    R.check(f"{label}: token.secret is not in the ConfigMap", "secret" not in cfg.get("token", {}))
    # Exactly the keys tether knows (config/tether.toml lists every key).
    want_keys = {(s, k) for s, t in ref.items() for k in t} - {("token", "secret")}
    got_keys = {(s, k) for s, t in cfg.items() for k in t}
    R.check(f"{label}: keys are those of config/tether.toml (minus token.secret)", got_keys == want_keys,
            f"unknown to tether: {sorted(got_keys - want_keys)}, missing: {sorted(want_keys - got_keys)}")
    # [tls] paths the chart sets from tls.* Secrets (check_tls asserts them).
    tls = values.get("tls") or {}
    from_secrets = {("tls", k) for k in (["cert_file", "key_file"] if tls.get("secretName") else [])
                    + (["upstream_ca_file"] if tls.get("upstreamCASecret") else [])
                    + (["upstream_client_cert_file", "upstream_client_key_file"]
                       if tls.get("upstreamClientSecret") else [])}
    for (s, k) in sorted(from_secrets):
        R.check(f"{label}: tls.{k} is under /etc/tether-tls/", str(cfg.get(s, {}).get(k, "")).startswith(
            "/etc/tether-tls/"), f"got {cfg.get(s, {}).get(k)!r}")
    # Every value the chart did not set on purpose follows values.config.
    for (s, k) in sorted(got_keys & want_keys):
        if (s, k) in {("server", "listen"), ("server", "admin_listen"), ("server", "upstream"),
                      ("journal", "data_dir")} | from_secrets | {("cluster", k) for k in CLUSTER_DERIVED}:
            continue
        want = values["config"].get(s, {}).get(k)
        if cfg[s][k] != want:
            R.check(f"{label}: {s}.{k} follows values.config", False, f"got {cfg[s][k]!r}, want {want!r}")
            break
    else:
        R.check(f"{label}: every other key follows values.config", True)


# The [cluster] keys the chart sets (check_cluster asserts them).
CLUSTER_DERIVED = ["mode", "name", "instance", "peer_listen", "peer_address", "replicas", "peers", "advertise",
                   "members_dns"]


def cluster_section(mode: str = "off", name: str = "tether", peer_address: str = "", replicas: int = 0,
                    members_dns: str = "", peer_listen: str = "0.0.0.0:8081") -> dict[str, Any]:
    """The [cluster] section the chart must render (with the default forward_timeout, peer_auth_max_age)."""
    return {"mode": mode, "name": name, "instance": "", "peer_listen": peer_listen, "peer_address": peer_address,
            "replicas": replicas, "peers": {}, "advertise": "", "members_dns": members_dns,
            "forward_timeout": "2s", "peer_auth_max_age": "30s"}


# --- scenarios --------------------------------------------------------------


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (Mi, Gi) in MiB."""
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def check_memory_budget(label: str, cfg: dict[str, Any], values: dict[str, Any]) -> None:
    """resources.limits.memory holds the worst case of docs/OPERATIONS.md#memory at the rendered limits:
    200 MiB + max_sessions x (2 x ring_bytes + 2 x replay_batch_bytes + write_buffer_bytes + 12 KiB)."""
    lim = cfg["limits"]
    per_session = 2 * lim["ring_bytes"] + 2 * lim["replay_batch_bytes"] + lim["write_buffer_bytes"] + 12 * 1024
    need = 200 + lim["max_sessions"] * per_session / 2**20
    have = mebibytes(values["resources"]["limits"]["memory"])
    R.check(f"{label}: resources.limits.memory ({have:.0f} MiB) holds max_sessions at worst ({need:.0f} MiB)",
            need <= have, f"{need:.0f} MiB > {have:.0f} MiB")


def merged(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def check_key_list() -> None:
    """The chart's list of tether.toml keys ("tether.configKeys" in _helpers.tpl,
    static YAML) against config/tether.toml: the chart renders only keys on that
    list, so a key tether gains or loses must be added or removed there."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    m = re.search(r'{{-? define "tether.configKeys" -?}}\n(.*?){{-? end }}', text, re.S)
    if not R.check("_helpers.tpl defines tether.configKeys", m is not None):
        return
    spec = yaml.safe_load(m.group(1))
    ref = tomllib.loads(TETHER_TOML.read_text())
    R.eq("tether.configKeys sections are config/tether.toml's, in order", spec["sections"], list(ref))
    listed = {f"{s}.{k}" for s, keys in spec["keys"].items() for k in keys}
    derived = set(spec["derived"])
    want = {f"{s}.{k}" for s, t in ref.items() for k in t}
    R.check("tether.configKeys lists every key of config/tether.toml once (keys + derived)",
            listed | derived == want and not listed & derived,
            f"unknown to tether: {sorted((listed | derived) - want)}, missing: {sorted(want - listed - derived)}, "
            f"both listed and derived: {sorted(listed & derived)}")
    R.eq("derived keys", sorted(derived), ["cluster.advertise", "cluster.instance", "cluster.members_dns", "cluster.mode",
                                           "cluster.name", "cluster.peer_address", "cluster.peer_listen", "cluster.peers",
                                           "cluster.replicas", "journal.data_dir", "server.admin_listen",
                                           "server.listen", "token.secret"])


def lint_all(defaults: dict[str, Any]) -> None:
    sets = [("default values", None)] + [
        (f"ci/{p.name}", load_values(p)) for p in sorted((CHART / "ci").glob("*.yaml"))
    ]
    for label, values in sets:
        report = helm.lint(str(CHART), values, strict=True, kube_version="v" + WANTED_KUBE)
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        R.check(f"lint --strict ({label})", not report.get("errors") and not bad,
                "; ".join(f"{m['path']}: {m['error']}" for m in bad) or "; ".join(report.get("errors", [])))


def check_default(defaults: dict[str, Any]) -> None:
    label = "default"
    rendered = render(CHART)
    docs = documents(rendered)
    validate_all(label, docs)
    kinds = sorted(d["kind"] for _, d in docs)
    R.eq(f"{label}: kinds", kinds,
         ["ConfigMap", "Pod", "PodDisruptionBudget", "Secret", "Service", "Service", "StatefulSet"])

    sts = one(docs, "StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    R.eq(f"{label}: replicas", spec.get("replicas"), 1)
    R.check(f"{label}: StatefulSet selector matches the pod labels",
            selects(spec["selector"]["matchLabels"], pod_labels))
    check_tether_container(label, pod, defaults, docs)

    # The journal: a volumeClaimTemplate named like the mounted volume.
    vcts = {v["metadata"]["name"]: v for v in spec.get("volumeClaimTemplates", [])}
    vct = vcts.get("tether-journal")
    if R.check(f"{label}: volumeClaimTemplate tether-journal", vct is not None, f"got {list(vcts)}"):
        R.eq(f"{label}: PVC access mode", vct["spec"]["accessModes"], ["ReadWriteOnce"])
        R.eq(f"{label}: PVC size", vct["spec"]["resources"]["requests"]["storage"], defaults["persistence"]["size"])
    R.check(f"{label}: the journal is not also a pod volume",
            "tether-journal" not in {v["name"] for v in pod.get("volumes", [])})

    psc = pod.get("securityContext") or {}
    R.check(f"{label}: pod runAsNonRoot", psc.get("runAsNonRoot") is True)
    R.check(f"{label}: pod fsGroup (journal PVC writable)", (psc.get("fsGroup") or 0) > 0)
    R.check(f"{label}: no service account token", pod.get("automountServiceAccountToken") is False)
    R.check(f"{label}: config checksum on the pod template",
            "checksum/config" in (spec["template"]["metadata"].get("annotations") or {}))

    cfg = toml_of(docs)
    check_tether_toml(label, cfg, defaults, defaults["config"]["server"]["upstream"])
    # The defaults in values.yaml are tether's own defaults, except where the
    # chart must differ: the backend, the volume, the admin port, which
    # tether binds to loopback unless asked and the chart asks for on every
    # interface (probes and Prometheus come from outside the pod), and the
    # log format: JSON for a cluster's log collector, and max_sessions, which
    # must fit the memory limit (docs/OPERATIONS.md#memory).
    ref = tomllib.loads(TETHER_TOML.read_text())
    exempt = {("server", "upstream"), ("journal", "data_dir"), ("server", "admin_listen"), ("log", "format"),
              ("limits", "max_sessions")}
    R.eq(f"{label}: logs are JSON", cfg["log"]["format"], "json")
    check_memory_budget(label, cfg, defaults)
    differ = [f"{s}.{k}: {cfg[s][k]!r} != {ref[s][k]!r}" for s in ref for k in ref[s]
              if s in cfg and k in cfg[s] and (s, k) not in exempt
              and cfg[s][k] != ref[s][k]]
    R.check(f"{label}: the admin port listens on every interface", cfg["server"]["admin_listen"] == "0.0.0.0:9090",
            cfg["server"]["admin_listen"])
    R.check(f"{label}: values.config defaults equal config/tether.toml's", not differ, "; ".join(differ))

    # Services.
    svcs = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    headless = svcs.get(spec.get("serviceName"))
    R.check(f"{label}: serviceName is a rendered headless Service",
            headless is not None and headless["spec"].get("clusterIP") == "None",
            f"{spec.get('serviceName')} in {list(svcs)}")
    c = container(pod)
    for name, svc in svcs.items():
        R.check(f"{label}: Service {name} selects the pods", selects(svc["spec"]["selector"], pod_labels))
        for p in svc["spec"]["ports"]:
            R.check(f"{label}: Service {name} port {p['name']} targets a container port",
                    port_number(c, p["targetPort"]) is not None)
    client = [s for n, s in svcs.items() if s["spec"].get("clusterIP") != "None"]
    if R.check(f"{label}: one client-facing Service", len(client) == 1):
        ports = {p["name"]: p for p in client[0]["spec"]["ports"]}
        R.eq(f"{label}: client Service exposes only the data port", sorted(ports), ["tether-data"])
        R.eq(f"{label}: client Service port", ports["tether-data"]["port"], defaults["service"]["port"])
        R.eq(f"{label}: sessionAffinity", client[0]["spec"].get("sessionAffinity"), "None")
    if headless:
        R.eq(f"{label}: headless Service ports", sorted(p["name"] for p in headless["spec"]["ports"]),
             ["tether-admin", "tether-data"])
        R.check(f"{label}: headless Service publishes not-ready pods (drain, startup)",
                headless["spec"].get("publishNotReadyAddresses") is True)

    pdb = one(docs, "PodDisruptionBudget")
    R.check(f"{label}: PDB selects the pods", selects(pdb["spec"]["selector"]["matchLabels"], pod_labels))
    R.eq(f"{label}: PDB maxUnavailable", pdb["spec"].get("maxUnavailable"), 1)

    text = notes(rendered)
    R.check(f"{label}: NOTES say cluster mode is off", "Cluster mode is off" in text, text[-400:])
    R.eq(f"{label}: [cluster] off", cfg.get("cluster"), cluster_section())
    R.eq(f"{label}: env is the token secret only", [e["name"] for e in c["env"]], ["TETHER_TOKEN_SECRET"])
    R.eq(f"{label}: no peer port on the pod", sorted(p["name"] for p in c["ports"]), ["tether-admin", "tether-data"])
    R.check(f"{label}: no NetworkPolicy by default", not by_kind(docs, "NetworkPolicy"))
    R.check(f"{label}: NOTES warn about the placeholder upstream", "placeholder" in text)


def check_pod(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The `helm test` hook Pod, if rendered."""
    pods = [d for d in by_kind(docs, "Pod") if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    return pods[0] if len(pods) == 1 else None


def check_test_hook(defaults: dict[str, Any]) -> None:
    """`helm test`: a Pod on tether's image runs `tether check` against the release's Service."""
    label = "helm test hook"
    docs = documents(render(CHART))
    pod = check_pod(docs)
    if not R.check(f"{label}: one test Pod (helm.sh/hook: test)", pod is not None, f"{by_kind(docs, 'Pod')}"):
        return
    spec = pod["spec"]
    c = spec["containers"][0]
    t = defaults["test"]
    svc = next(s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") != "None")
    url = f"ws://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{defaults['service']['port']}/"
    R.eq(f"{label}: tether's own image", c["image"], f"{defaults['image']['repository']}:{defaults['image']['tag']}")
    R.eq(f"{label}: runs tether check", c["command"], ["/usr/local/bin/tether", "check"])
    R.eq(f"{label}: against the release's Service, bounded", c["args"],
         [url, "--duration", t["duration"], "--sessions", str(t["sessions"])])
    R.eq(f"{label}: restartPolicy Never", spec.get("restartPolicy"), "Never")
    # The checker's own bound: duration + 2 x resume timeout (30 s) + idle (2 s) + 25 s (docs/CHECK.md).
    R.check(f"{label}: activeDeadlineSeconds covers the checker's bound",
            spec["activeDeadlineSeconds"] >= duration_seconds(t["duration"]) + 2 * 30 + 2 + 25,
            str(spec["activeDeadlineSeconds"]))
    R.eq(f"{label}: the last run's Pod is kept for its log", pod["metadata"]["annotations"].get(
        "helm.sh/hook-delete-policy"), "before-hook-creation")
    R.check(f"{label}: runs as non-root with a read-only root",
            spec["securityContext"].get("runAsNonRoot") is True and c["securityContext"].get("readOnlyRootFilesystem"))
    R.check(f"{label}: no service account token", spec.get("automountServiceAccountToken") is False)
    labels = pod["metadata"]["labels"]
    sts = one(docs, "StatefulSet")
    selectors = [s["spec"]["selector"] for s in by_kind(docs, "Service")] + [
        sts["spec"]["selector"]["matchLabels"], one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]]
    R.check(f"{label}: no Service, StatefulSet or PDB selects the test Pod",
            not any(selects(sel, labels) for sel in selectors))

    # Options: TLS on the data port (wss://), send, insecure, a header from a Secret, extra args.
    v = {"tls": {"secretName": "tether-tls"},
         "test": {"path": "/feed?room=check", "duration": "45s", "send": True, "insecure": True,
                  "headerSecret": {"name": "api", "key": "header"}, "extraArgs": ["--send-interval", "1s"]}}
    docs = documents(render(CHART, v))
    validate_all(f"{label}, options", docs)
    c = check_pod(docs)["spec"]["containers"][0]
    R.eq(f"{label}, options: args", c["args"], [
        f"wss://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:8080/feed?room=check", "--duration", "45s",
        "--sessions", "4", "--send", "--insecure", "--header", "$(TETHER_CHECK_HEADER)", "--send-interval", "1s"])
    R.eq(f"{label}, options: the header comes from the Secret", c["env"],
         [{"name": "TETHER_CHECK_HEADER", "valueFrom": {"secretKeyRef": {"name": "api", "key": "header"}}}])
    docs = documents(render(CHART, {"test": {"url": "wss://ws.staging.example.com/feed"}}))
    R.eq(f"{label}: test.url replaces the Service URL", check_pod(docs)["spec"]["containers"][0]["args"][0],
         "wss://ws.staging.example.com/feed")
    R.check(f"{label}: test.enabled false renders no Pod",
            not by_kind(documents(render(CHART, {"test": {"enabled": False}})), "Pod"))
    # A NetworkPolicy that limits the data port still lets the test Pod in.
    docs = documents(render(CHART, {"networkPolicy": {"enabled": True, "dataFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}}))
    rule = one(docs, "NetworkPolicy")["spec"]["ingress"][0]
    R.check(f"{label}: the NetworkPolicy lets the test Pod reach the data port",
            any(selects(f.get("podSelector", {}).get("matchLabels", {"-": "-"}), check_pod(docs)["metadata"]["labels"])
                for f in rule["from"]), str(rule))


def check_sidecar(defaults: dict[str, Any]) -> None:
    label = "sidecar"
    override = load_values(CHART / "ci" / "sidecar-values.yaml")
    values = merged(defaults, override)
    rendered = render(CHART, override)
    docs = documents(rendered)
    validate_all(label, docs)
    R.check(f"{label}: no StatefulSet", not by_kind(docs, "StatefulSet"))
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["containers"]]
    R.eq(f"{label}: containers", names, [override["sidecar"]["deployment"]["backend"]["name"], "tether"])
    R.check(f"{label}: Deployment selector matches the pod labels",
            selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]))
    check_tether_container(label, pod, values, docs)
    vols = {v["name"]: v for v in pod["volumes"]}
    R.check(f"{label}: journal on an emptyDir", "emptyDir" in (vols.get("tether-journal") or {}),
            f"volumes: {list(vols)}")
    cfg = toml_of(docs)
    check_tether_toml(label, cfg, values, f"ws://127.0.0.1:{values['sidecar']['backendPort']}")
    R.eq(f"{label}: log.format from the values file", cfg["log"]["format"], "json")
    svcs = by_kind(docs, "Service")
    R.check(f"{label}: Services select the Deployment's pods",
            len(svcs) == 2 and all(selects(s["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
                                   for s in svcs))
    R.check(f"{label}: PDB for the Deployment", len(by_kind(docs, "PodDisruptionBudget")) == 1)
    psc = pod.get("securityContext") or {}
    R.check(f"{label}: pod fsGroup, no pod-wide runAsUser forced on the backend",
            (psc.get("fsGroup") or 0) > 0 and "runAsUser" not in psc, f"{psc}")

    # The sidecar on a claim instead of an emptyDir.
    pvc_values = merged(override, {"sidecar": {"journal": {"type": "persistentVolumeClaim",
                                                           "claimName": "chat-journal"}}})
    docs = documents(render(CHART, pvc_values))
    validate_all(f"{label} (PVC)", docs)
    dep = one(docs, "Deployment")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    R.eq(f"{label} (PVC): journal claim", (vols.get("tether-journal") or {}).get("persistentVolumeClaim"),
         {"claimName": "chat-journal"})
    R.eq(f"{label} (PVC): Recreate strategy", (dep["spec"].get("strategy") or {}).get("type"), "Recreate")


def check_servicemonitor(defaults: dict[str, Any]) -> None:
    label = "servicemonitor"
    override = load_values(CHART / "ci" / "servicemonitor-values.yaml")
    values = merged(defaults, override)
    docs = documents(render(CHART, override, api_versions=["monitoring.coreos.com/v1"]))
    validate_all(label, docs)
    sm = one(docs, "ServiceMonitor")
    R.eq(f"{label}: apiVersion", sm.get("apiVersion"), "monitoring.coreos.com/v1")
    R.eq(f"{label}: namespace", sm["metadata"].get("namespace"), NAMESPACE)
    R.eq(f"{label}: label for Prometheus' selector", sm["metadata"]["labels"].get("release"), "prometheus")
    eps = sm["spec"].get("endpoints") or []
    if R.check(f"{label}: one endpoint", len(eps) == 1):
        R.eq(f"{label}: endpoint port", eps[0].get("port"), "tether-admin")
        R.eq(f"{label}: endpoint path", eps[0].get("path"), "/metrics")
        R.eq(f"{label}: interval", eps[0].get("interval"), "15s")
        R.eq(f"{label}: scrapeTimeout", eps[0].get("scrapeTimeout"), "5s")
    R.eq(f"{label}: namespaceSelector", sm["spec"].get("namespaceSelector"), {"matchNames": [NAMESPACE]})
    sel = sm["spec"]["selector"]["matchLabels"]
    matched = [s for s in by_kind(docs, "Service") if selects(sel, s["metadata"].get("labels") or {})]
    R.check(f"{label}: selects exactly the headless Service",
            len(matched) == 1 and matched[0]["spec"].get("clusterIP") == "None",
            f"matched {[s['metadata']['name'] for s in matched]}")
    if matched:
        R.check(f"{label}: that Service has the admin port",
                "tether-admin" in [p["name"] for p in matched[0]["spec"]["ports"]])
    sts = one(docs, "StatefulSet")
    vct = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    R.eq(f"{label}: storageClassName", vct.get("storageClassName"), "fast-ssd")
    R.eq(f"{label}: PVC size", vct["resources"]["requests"]["storage"], "20Gi")
    cfg = toml_of(docs)
    check_tether_toml(label, cfg, values, override["config"]["server"]["upstream"])
    R.eq(f"{label}: journal.sync from the values file", cfg["journal"]["sync"], "interval")


def check_variants(defaults: dict[str, Any]) -> None:
    # existingSecret in standalone mode.
    label = "existingSecret"
    v = {"tokenSecret": {"existingSecret": "my-token", "key": "k"}}
    docs = documents(render(CHART, v))
    validate_all(label, docs)
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    check_tether_container(label, pod, merged(defaults, v), docs)
    ref = next(e for e in container(pod)["env"] if e["name"] == "TETHER_TOKEN_SECRET")
    R.eq(f"{label}: secretKeyRef", ref["valueFrom"]["secretKeyRef"], {"name": "my-token", "key": "k"})

    # A literal secret.
    label = "tokenSecret.value"
    v = {"tokenSecret": {"value": "x" * 40}}
    docs = documents(render(CHART, v))
    check_tether_container(label, one(docs, "StatefulSet")["spec"]["template"]["spec"], merged(defaults, v), docs)
    R.check(f"{label}: not marked keep", "annotations" not in one(docs, "Secret")["metadata"])

    # Several replicas with ClientIP affinity.
    label = "replicas 3 + ClientIP"
    docs = documents(render(CHART, {"replicaCount": 3, "service": {"sessionAffinity": "ClientIP"},
                                    "tokenSecret": {"existingSecret": "t"}}))
    validate_all(label, docs)
    R.eq(f"{label}: replicas", one(docs, "StatefulSet")["spec"]["replicas"], 3)
    client = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") != "None"][0]
    R.eq(f"{label}: sessionAffinity", client["spec"].get("sessionAffinity"), "ClientIP")
    R.eq(f"{label}: affinity timeout", client["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 10800)

    # No persistence: an emptyDir journal and no claim.
    label = "persistence disabled"
    docs = documents(render(CHART, {"persistence": {"enabled": False}}))
    validate_all(label, docs)
    spec = one(docs, "StatefulSet")["spec"]
    R.check(f"{label}: no volumeClaimTemplates", not spec.get("volumeClaimTemplates"))
    vols = {x["name"]: x for x in spec["template"]["spec"]["volumes"]}
    R.check(f"{label}: journal on an emptyDir", "emptyDir" in (vols.get("tether-journal") or {}))

    # preStop on Kubernetes < 1.30 (no native sleep action) and >= 1.30.
    for kv, want in (("v1.29.0", "exec"), ("v1.30.0", "sleep")):
        pod = one(documents(render(CHART, kube_version=kv)), "StatefulSet")["spec"]["template"]["spec"]
        pre = container(pod)["lifecycle"]["preStop"]
        R.check(f"preStop on Kubernetes {kv}: {want}", want in pre, f"got {pre}")

    # Longer shutdown_grace: the grace period follows.
    label = "shutdown_grace 1m 30s"
    docs = documents(render(CHART, {"config": {"server": {"shutdown_grace": "1m 30s"}}}))
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    R.eq(f"{label}: terminationGracePeriodSeconds", pod["terminationGracePeriodSeconds"], 5 + 90 + 10)

    # A config change rolls the pods.
    a = one(documents(render(CHART)), "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    b = one(documents(render(CHART, {"config": {"journal": {"sync": "always"}}})),
            "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    R.check("config change changes checksum/config", a["checksum/config"] != b["checksum/config"])

    # A null key is left out (tether's default applies).
    cfg = toml_of(documents(render(CHART, {"config": {"session": {"linger": None}}})))
    R.check("config key set to null is left out", "linger" not in cfg["session"])


def check_monitoring(defaults: dict[str, Any]) -> None:
    """PrometheusRule and Grafana dashboard ConfigMap, from the files they ship."""
    label = "monitoring"
    override = load_values(CHART / "ci" / "monitoring-values.yaml")
    docs = documents(render(CHART, override, api_versions=["monitoring.coreos.com/v1"]))
    validate_all(label, docs)
    rules_text = RULES_FILE.read_text()
    want_groups = yaml.safe_load(rules_text)["groups"]
    budget = override["config"]["journal"]["disk_budget_bytes"]

    pr = one(docs, "PrometheusRule")
    R.eq(f"{label}: PrometheusRule apiVersion", pr.get("apiVersion"), "monitoring.coreos.com/v1")
    R.eq(f"{label}: PrometheusRule namespace", pr["metadata"].get("namespace"), NAMESPACE)
    R.eq(f"{label}: PrometheusRule label for Prometheus' ruleSelector", pr["metadata"]["labels"].get("release"),
         "prometheus")
    groups = (pr.get("spec") or {}).get("groups")
    want = yaml.safe_load(rules_text.replace("0.9 * 1073741824", f"0.9 * {budget}"))["groups"]
    R.check(f"{label}: PrometheusRule groups are those of files/prometheus/tether-rules.yaml "
            f"(disk budget {budget})", groups == want, f"got {groups!r}")
    exprs = {r["alert"]: r["expr"] for g in groups or [] for r in g["rules"]}
    R.eq(f"{label}: TetherJournalNearBudget uses config.journal.disk_budget_bytes",
         exprs.get("TetherJournalNearBudget"), f"tether_journal_retained_bytes > 0.9 * {budget}")
    R.eq(f"{label}: every alert of the rules file is rendered", sorted(exprs),
         sorted(r["alert"] for g in want_groups for r in g["rules"]))
    if shutil.which("promtool"):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump({"groups": groups}, f)
            f.flush()
            import subprocess
            out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
            R.check(f"{label}: promtool check rules accepts the PrometheusRule's groups", out.returncode == 0,
                    (out.stdout + out.stderr).strip())
    # With the default budget the groups are the file's, unchanged.
    d = documents(render(CHART, {"prometheusRule": {"enabled": True}}, api_versions=["monitoring.coreos.com/v1"]))
    R.check("prometheusRule.enabled with default values: groups equal the rules file",
            one(d, "PrometheusRule")["spec"]["groups"] == want_groups)

    cms = {c["metadata"]["name"]: c for c in by_kind(docs, "ConfigMap")}
    dash = cms.get(f"{RELEASE}-dashboard")
    if R.check(f"{label}: dashboard ConfigMap {RELEASE}-dashboard", dash is not None, f"got {list(cms)}"):
        R.eq(f"{label}: dashboard ConfigMap has the sidecar label grafana_dashboard: \"1\"",
             dash["metadata"]["labels"].get("grafana_dashboard"), "1")
        R.eq(f"{label}: dashboard ConfigMap annotations", dash["metadata"].get("annotations"),
             {"grafana_folder": "tether"})
        R.eq(f"{label}: dashboard ConfigMap keys", sorted(dash.get("data", {})), ["tether-dashboard.json"])
        got = json.loads(dash["data"]["tether-dashboard.json"])
        R.check(f"{label}: the ConfigMap carries files/grafana/tether-dashboard.json",
                got == json.loads(DASHBOARD_FILE.read_text()))
    R.check(f"{label}: tether.toml still in its own ConfigMap", "tether.toml" in cms.get(RELEASE, {}).get("data", {}))
    for link, target in ((ROOT / "docs" / "grafana" / "tether-dashboard.json", DASHBOARD_FILE),
                         (ROOT / "deploy" / "prometheus" / "tether-rules.yaml", RULES_FILE)):
        R.check(f"{link.relative_to(ROOT)} is {target.relative_to(ROOT)}", link.resolve() == target.resolve())

    # Off by default (check_default asserts the exact kinds too).
    d = documents(render(CHART))
    R.check("default values: no PrometheusRule, no dashboard ConfigMap",
            not by_kind(d, "PrometheusRule") and len(by_kind(d, "ConfigMap")) == 1)

    # The default image is the Dockerfile's, whose config fits the chart.
    R.eq("default image.repository", defaults["image"]["repository"], "ghcr.io/tether-proxy/tether")
    text = DOCKERFILE.read_text()
    arg = re.search(r"^ARG VERSION=(\S+)", text, re.M)
    with helm.Chart.load(str(CHART)) as chart:
        app_version = str(chart.metadata.get("appVersion"))
    R.eq("Dockerfile ARG VERSION equals Chart.yaml appVersion", arg.group(1) if arg else None, app_version)
    user = re.search(r"^USER (\d+)(?::(\d+))?", text, re.M)
    R.eq("Dockerfile USER is securityContext.runAsUser:runAsGroup",
         (int(user.group(1)), int(user.group(2) or -1)) if user else None,
         (defaults["securityContext"]["runAsUser"], defaults["securityContext"]["runAsGroup"]))
    vol = re.search(r'^VOLUME \["([^"]+)"\]', text, re.M)
    R.eq("Dockerfile VOLUME is persistence.mountPath", vol.group(1) if vol else None,
         defaults["persistence"]["mountPath"])
    expose = re.search(r"^EXPOSE (.+)$", text, re.M)
    R.eq("Dockerfile EXPOSE is ports.data and ports.admin", expose.group(1).split() if expose else None,
         [f"{defaults['ports']['data']}/tcp", f"{defaults['ports']['admin']}/tcp"])


def check_cluster(defaults: dict[str, Any]) -> None:
    """ci/cluster-values.yaml: 3 replicas in statefulset cluster mode, a NetworkPolicy; and variants."""
    label = "cluster"
    override = load_values(CHART / "ci" / "cluster-values.yaml")
    values = merged(defaults, override)
    rendered = render(CHART, override)
    docs = documents(rendered)
    validate_all(label, docs)
    R.eq(f"{label}: kinds", sorted(d["kind"] for _, d in docs),
         ["ConfigMap", "NetworkPolicy", "Pod", "PodDisruptionBudget", "Service", "Service", "StatefulSet"])
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    R.eq(f"{label}: replicas", sts["spec"]["replicas"], 3)
    c = check_tether_container(label, pod, values, docs)
    tsc = pod.get("topologySpreadConstraints") or [{}]
    R.check(f"{label}: the example's topologySpreadConstraints select the pods (release {RELEASE})",
            selects(tsc[0].get("labelSelector", {}).get("matchLabels", {}), pod_labels))

    # The plain Service, no affinity, data port only; the headless Service names the peers.
    svcs = {x["metadata"]["name"]: x for x in by_kind(docs, "Service")}
    client = svcs.get(RELEASE, {}).get("spec", {})
    R.eq(f"{label}: client Service has no session affinity", client.get("sessionAffinity"), "None")
    R.eq(f"{label}: client Service ports", [(p["name"], p["port"]) for p in client.get("ports", [])],
         [("tether-data", 8080)])
    headless = svcs.get(sts["spec"]["serviceName"], {}).get("spec", {})
    R.eq(f"{label}: StatefulSet serviceName", sts["spec"]["serviceName"], f"{RELEASE}-headless")
    R.eq(f"{label}: headless clusterIP", headless.get("clusterIP"), "None")
    R.check(f"{label}: headless Service publishes not-ready pods (a restarting owner keeps its name)",
            headless.get("publishNotReadyAddresses") is True)
    R.eq(f"{label}: headless Service ports", [(p["name"], p["port"], p["targetPort"]) for p in headless.get("ports", [])],
         [("tether-data", 8080, "tether-data"), ("tether-admin", 9090, "tether-admin"),
          ("tether-peer", 8081, "tether-peer")])
    R.check(f"{label}: headless Service selects the pods", selects(headless.get("selector", {}), pod_labels))
    R.eq(f"{label}: container ports", [(p["name"], p["containerPort"]) for p in c["ports"]],
         [("tether-data", 8080), ("tether-admin", 9090), ("tether-peer", 8081)])

    # Env: the shared secret and the instance from the pod name.
    R.eq(f"{label}: env", c["env"], [
        {"name": "TETHER_TOKEN_SECRET", "valueFrom": {"secretKeyRef": {"name": "tether-token", "key": "token-secret"}}},
        {"name": "TETHER_CLUSTER_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ])
    R.check(f"{label}: no Secret rendered: every replica reads tokenSecret.existingSecret", not by_kind(docs, "Secret"))

    # [cluster] in tether.toml.
    cfg = toml_of(docs)
    check_tether_toml(label, cfg, values, "ws://chat-backend.chat.svc:9000")
    fqdn = f"{RELEASE}-headless.{NAMESPACE}.svc.cluster.local"
    want = cluster_section("statefulset", "chat-tether", "{instance}." + fqdn + ":8081", 3)
    R.eq(f"{label}: [cluster]", cfg.get("cluster"), want)
    # Pod N is <sts>-N and Kubernetes names it <sts>-N.<serviceName>.<ns>.svc.<domain>: the template
    # must give exactly that, on the headless Service's peer port.
    addr = cfg["cluster"]["peer_address"].replace("{instance}", f"{sts['metadata']['name']}-2")
    R.eq(f"{label}: peer address of pod 2 is its headless-Service DNS name and peer port", addr,
         f"{sts['metadata']['name']}-2.{sts['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local:"
         f"{next(p['port'] for p in headless['ports'] if p['name'] == 'tether-peer')}")
    R.eq(f"{label}: pod 0 runs as instance {RELEASE}-0 (file + env)",
         tomllib.loads(overlay_env(cms_text(docs), pod_env(docs, RELEASE)))["cluster"]["instance"], f"{RELEASE}-0")

    # The NetworkPolicy.
    np_ = one(docs, "NetworkPolicy")["spec"]
    R.check(f"{label}: NetworkPolicy selects the tether pods", selects(np_["podSelector"]["matchLabels"], pod_labels))
    R.eq(f"{label}: NetworkPolicy policyTypes", np_["policyTypes"], ["Ingress"])
    R.eq(f"{label}: NetworkPolicy ingress", np_["ingress"], [
        {"ports": [{"port": "tether-data", "protocol": "TCP"}], "from": override["networkPolicy"]["dataFrom"] + [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tether-check",
                                             "app.kubernetes.io/instance": RELEASE}}}]},
        {"ports": [{"port": "tether-admin", "protocol": "TCP"}], "from": override["networkPolicy"]["adminFrom"]},
        {"ports": [{"port": "tether-peer", "protocol": "TCP"}],
         "from": [{"podSelector": {"matchLabels": np_["podSelector"]["matchLabels"]}}]},
    ])
    peer_rules = [r for r in np_["ingress"] if any(p["port"] == "tether-peer" for p in r["ports"])]
    R.check(f"{label}: only tether pods of this release reach the peer port",
            len(peer_rules) == 1 and all(selects(f["podSelector"]["matchLabels"], pod_labels) and len(f) == 1
                                         for f in peer_rules[0]["from"]))
    text = notes(rendered)
    R.check(f"{label}: NOTES name the peers", f"Peers: {RELEASE}-0 .. {RELEASE}-2 at <pod>.{fqdn}:8081" in text,
            text[-500:])

    # NetworkPolicy with no sources: data and admin from anyone, peer still tether pods only.
    label = "cluster, open NetworkPolicy"
    docs = documents(render(CHART, merged(override, {"networkPolicy": {"dataFrom": [], "adminFrom": []}})))
    validate_all(label, docs)
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    R.eq(f"{label}: data and admin rules have no from (anyone)", [("from" in r) for r in rules], [False, False, True])
    # Cluster off: no peer rule.
    docs = documents(render(CHART, {"networkPolicy": {"enabled": True}}))
    R.eq("NetworkPolicy, cluster off: no peer rule",
         [p["port"] for r in one(docs, "NetworkPolicy")["spec"]["ingress"] for p in r["ports"]],
         ["tether-data", "tether-admin"])

    # One replica forced into cluster mode; another name, domain, peer port.
    label = "cluster.enabled true, 1 replica"
    v = {"cluster": {"enabled": True, "clusterDomain": "corp.internal"}, "ports": {"peer": 7000},
         "tokenSecret": {"value": "v" * 40}}
    docs = documents(render(CHART, v))
    validate_all(label, docs)
    cfg = toml_of(docs)
    R.eq(f"{label}: [cluster]", cfg.get("cluster"),
         cluster_section("statefulset", f"{RELEASE}.{NAMESPACE}",
                         f"{{instance}}.{RELEASE}-headless.{NAMESPACE}.svc.corp.internal:7000", 1,
                         peer_listen="0.0.0.0:7000"))
    R.eq(f"{label}: the Secret the chart renders is the one every replica reads",
         container(one(docs, "StatefulSet")["spec"]["template"]["spec"])["env"][0]["valueFrom"]["secretKeyRef"],
         {"name": RELEASE, "key": "token-secret"})

    # Scaling changes [cluster] replicas, so the pods roll and each knows the new count.
    sums = [one(documents(render(CHART, merged(override, {"replicaCount": n}))),
                "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for n in (3, 4)]
    R.check("cluster: replicaCount 3 -> 4 changes checksum/config (the pods learn the new count)", sums[0] != sums[1])
    # cluster.replicas fixed at the planned maximum: scaling changes nothing in tether.toml.
    fixed_max = [one(documents(render(CHART, merged(override, {"replicaCount": n, "cluster": {"replicas": 6}}))),
                     "StatefulSet") for n in (3, 4)]
    R.eq("cluster.replicas 6: StatefulSet replicas follow replicaCount",
         [x["spec"]["replicas"] for x in fixed_max], [3, 4])
    R.check("cluster.replicas 6: replicaCount 3 -> 4 leaves checksum/config alone",
            len({x["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for x in fixed_max}) == 1)
    cfg = toml_of(documents(render(CHART, merged(override, {"cluster": {"replicas": 6}}))))
    R.eq("cluster.replicas 6: [cluster] replicas", cfg["cluster"]["replicas"], 6)


def check_ingress(defaults: dict[str, Any]) -> None:
    """ci/ingress-values.yaml: the optional Ingress routes only to the data port of the client Service,
    never to the admin or peer port; off by default."""
    label = "ingress"
    R.check("default values: no Ingress", not by_kind(documents(render(CHART)), "Ingress"))
    override = load_values(CHART / "ci" / "ingress-values.yaml")
    docs = documents(render(CHART, override))
    validate_all(label, docs)
    ing = one(docs, "Ingress")
    spec = ing["spec"]
    R.eq(f"{label}: ingressClassName", spec.get("ingressClassName"), "nginx")
    R.eq(f"{label}: annotations", ing["metadata"].get("annotations"), override["ingress"]["annotations"])
    R.eq(f"{label}: tls", spec.get("tls"), override["ingress"]["tls"])
    backends = [(r.get("host"), p["path"], p["backend"]["service"]["name"], p["backend"]["service"]["port"])
                for r in spec["rules"] for p in r["http"]["paths"]]
    R.eq(f"{label}: rules", backends, [("chat.example.com", "/ws", RELEASE, {"name": "tether-data"})])
    svcs = {x["metadata"]["name"]: x for x in by_kind(docs, "Service")}
    ports = {p["name"]: p for p in svcs.get(RELEASE, {}).get("spec", {}).get("ports", [])}
    R.eq(f"{label}: the Service the Ingress uses has the data port only", sorted(ports), ["tether-data"])
    peer = defaults["ports"]["peer"]
    R.check(f"{label}: the peer port ({peer}) is not reachable through the Ingress",
            all(p.get("targetPort") != "tether-peer" and p.get("port") != peer for p in ports.values())
            and all(b[3] != {"name": "tether-peer"} and b[3] != {"number": peer} for b in backends))
    R.check(f"{label}: cluster mode is on (a peer port exists to keep off the Ingress)",
            any(p["name"] == "tether-peer" for s in svcs.values() for p in s["spec"].get("ports", [])))
    # Without hosts' paths, / as Prefix.
    bare = merged(override, {"ingress": {"hosts": [{"host": "x.example.com"}], "tls": []}})
    bare_spec = one(documents(render(CHART, bare)), "Ingress")["spec"]
    R.eq(f"{label}: default path", [(p["path"], p["pathType"]) for p in bare_spec["rules"][0]["http"]["paths"]],
         [("/", "Prefix")])


def cms_text(docs: list[tuple[str, dict[str, Any]]]) -> str:
    return next(d for d in by_kind(docs, "ConfigMap") if "tether.toml" in d.get("data", {}))["data"]["tether.toml"]


def check_sealed(defaults: dict[str, Any]) -> None:
    """Sidecar next to a Deployment, 3 replicas: sealed mode."""
    label = "sealed"
    override = merged(load_values(CHART / "ci" / "sidecar-values.yaml"), {"sidecar": {"deployment": {"replicas": 3}}})
    values = merged(defaults, override)
    rendered = render(CHART, override)
    docs = documents(rendered)
    validate_all(label, docs)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    R.eq(f"{label}: replicas", dep["spec"]["replicas"], 3)
    c = check_tether_container(label, pod, values, docs)
    R.eq(f"{label}: env (POD_IP before the variable that expands it)", c["env"], [
        {"name": "TETHER_TOKEN_SECRET",
         "valueFrom": {"secretKeyRef": {"name": "chat-tether-token", "key": "token-secret"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TETHER_CLUSTER_ADVERTISE", "value": "$(POD_IP):8081"},
    ])
    R.eq(f"{label}: peer container port", [(p["name"], p["containerPort"]) for p in c["ports"]][-1:],
         [("tether-peer", 8081)])
    cfg = toml_of(docs)
    fqdn = f"{RELEASE}-headless.{NAMESPACE}.svc.cluster.local"
    R.eq(f"{label}: [cluster]", cfg.get("cluster"), cluster_section("sealed", f"{RELEASE}.{NAMESPACE}",
                                                                    members_dns=fqdn))
    R.eq(f"{label}: the pod advertises its IP and peer port (file + env)",
         tomllib.loads(overlay_env(cms_text(docs), pod_env(docs, RELEASE)))["cluster"]["advertise"], "10.0.0.10:8081")
    svcs = {x["metadata"]["name"]: x for x in by_kind(docs, "Service")}
    headless = svcs.get(f"{RELEASE}-headless", {}).get("spec", {})
    R.check(f"{label}: members_dns is a headless Service over the Deployment's pods, not-ready pods included",
            headless.get("clusterIP") == "None" and headless.get("publishNotReadyAddresses") is True
            and selects(headless.get("selector", {}), dep["spec"]["template"]["metadata"]["labels"]))
    R.check(f"{label}: headless Service has the peer port",
            ("tether-peer", 8081) in [(p["name"], p["port"]) for p in headless.get("ports", [])])

    # IPv6: the advertised address needs brackets.
    docs = documents(render(CHART, merged(override, {"listenHost": "[::]"})))
    env = container(one(docs, "Deployment")["spec"]["template"]["spec"])["env"]
    R.eq("sealed, listenHost [::]: TETHER_CLUSTER_ADVERTISE", env[-1], {"name": "TETHER_CLUSTER_ADVERTISE",
                                                                        "value": "[$(POD_IP)]:8081"})
    # Own Deployment (podSelector, no chart Deployment), cluster.enabled true; and without pod labels.
    for sel, want in (({"app": "chat"}, fqdn), ({}, "")):
        v = {"mode": "sidecar", "cluster": {"enabled": True}, "sidecar": {"podSelector": sel},
             "tokenSecret": {"existingSecret": "t"}}
        # No pod here (it is yours, with tether.sidecar.container): nothing to feed to `tether config`.
        cfg = toml_of(documents(render(CHART, v)), dump=False)
        R.eq(f"sealed, own Deployment, podSelector {sel}: members_dns", cfg["cluster"]["members_dns"], want)


TLS_MOUNTS = {
    # volume: (Secret value, mount path, {file: Secret key})
    "tether-tls": ("secretName", "/etc/tether-tls/server", {"tls.crt": "tls.crt", "tls.key": "tls.key"}),
    "tether-upstream-ca": ("upstreamCASecret", "/etc/tether-tls/upstream-ca", {"ca.crt": None}),
    "tether-upstream-client": ("upstreamClientSecret", "/etc/tether-tls/upstream-client",
                               {"tls.crt": "tls.crt", "tls.key": "tls.key"}),
}


def check_tls_pod(label: str, pod: dict[str, Any], cfg: dict[str, Any], tls: dict[str, Any]) -> None:
    """The TLS Secret volumes, their mounts and the [tls] paths agree with each other and with tls.*."""
    c = container(pod)
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    for vol, (value, path, files) in TLS_MOUNTS.items():
        secret = tls.get(value) or ""
        if not secret:
            R.check(f"{label}: no volume {vol} without tls.{value}", vol not in vols and vol not in mounts)
            continue
        want_items = [{"key": k or tls.get("upstreamCAKey", "ca.crt"), "path": f} for f, k in files.items()]
        R.eq(f"{label}: volume {vol}", vols.get(vol),
             {"name": vol, "secret": {"secretName": secret, "defaultMode": tls.get("defaultMode", 288),
                                      "items": want_items}})
        R.eq(f"{label}: {vol} mounted read-only at {path}, no subPath", mounts.get(vol),
             {"name": vol, "mountPath": path, "readOnly": True})
    want = {}
    if tls.get("secretName"):
        want |= {"cert_file": "/etc/tether-tls/server/tls.crt", "key_file": "/etc/tether-tls/server/tls.key"}
    if tls.get("upstreamCASecret"):
        want |= {"upstream_ca_file": "/etc/tether-tls/upstream-ca/ca.crt"}
    if tls.get("upstreamClientSecret"):
        want |= {"upstream_client_cert_file": "/etc/tether-tls/upstream-client/tls.crt",
                 "upstream_client_key_file": "/etc/tether-tls/upstream-client/tls.key"}
    got = {k: v for k, v in cfg.get("tls", {}).items() if k != "reload_interval" and v}
    R.eq(f"{label}: [tls] file paths", got, want)


def check_tls(defaults: dict[str, Any]) -> None:
    """ci/tls-values.yaml (both sides), the data port alone, and the sidecar."""
    label = "tls"
    override = load_values(CHART / "ci" / "tls-values.yaml")
    values = merged(defaults, override)
    rendered = render(CHART, override)
    docs = documents(rendered)
    validate_all(label, docs)
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    check_tether_container(label, pod, values, docs)
    cfg = toml_of(docs)
    check_tether_toml(label, cfg, values, "wss://chat-backend.chat.svc:9443")
    check_tls_pod(label, pod, cfg, values["tls"])
    R.check(f"{label}: the pod's fsGroup can read the 0440 files", pod["securityContext"].get("fsGroup") == 65532)
    text = notes(rendered)
    R.check(f"{label}: NOTES tell clients to use wss://", "wss://127.0.0.1:8080/" in text, text[:400])

    label = "tls data port only"
    v = {"tls": {"secretName": "edge-cert"}}
    docs = documents(render(CHART, v))
    validate_all(label, docs)
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    cfg = toml_of(docs)
    check_tether_toml(label, cfg, merged(defaults, v), defaults["config"]["server"]["upstream"])
    check_tls_pod(label, pod, cfg, merged(defaults, v)["tls"])
    R.eq(f"{label}: reload_interval follows values.config", cfg["tls"]["reload_interval"], "5s")

    label = "tls upstream CA under another key"
    v = {"config": {"server": {"upstream": "wss://b:443"}}, "tls": {"upstreamCASecret": "bundle",
                                                                   "upstreamCAKey": "root.pem"}}
    docs = documents(render(CHART, v))
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    check_tls_pod(label, pod, toml_of(docs), merged(defaults, v)["tls"])

    label = "tls sidecar"
    override = merged(load_values(CHART / "ci" / "sidecar-values.yaml"), {"tls": {"secretName": "edge-cert"}})
    docs = documents(render(CHART, override))
    validate_all(label, docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    cfg = toml_of(docs)
    check_tls_pod(label, pod, cfg, merged(defaults, override)["tls"])
    R.eq(f"{label}: the backend container gets no TLS mounts",
         [m["name"] for c in pod["containers"] if c["name"] != "tether" for m in c.get("volumeMounts", [])], [])

    # Default values: no TLS volume, empty [tls] paths.
    docs = documents(render(CHART))
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    check_tls_pod("default", pod, toml_of(docs), defaults["tls"])


def check_rejections() -> None:
    """Values that would make tether refuse to start, or break resumes, must not render."""
    cases = [
        ("unknown config key", {"config": {"server": {"listen_addr": "0.0.0.0:1"}}}, "no such key"),
        ("unknown config section", {"config": {"proxy": {"x": 1}}}, "no such section"),
        ("derived key config.journal.data_dir", {"config": {"journal": {"data_dir": "/x"}}}, "set by the chart"),
        ("derived key config.token.secret", {"config": {"token": {"secret": "y" * 40}}}, "set by the chart"),
        ("config value that is a map", {"config": {"log": {"level": {"a": 1}}}}, "must be a string"),
        ("http:// upstream", {"config": {"server": {"upstream": "http://b:1"}}}, "ws:// or wss:// URL"),
        ("config.tls.cert_file and tls.secretName",
         {"tls": {"secretName": "c"}, "config": {"tls": {"cert_file": "/x.crt", "key_file": "/x.key"}}},
         "config.tls.cert_file is set by the chart"),
        ("tls.upstreamCASecret with a ws:// upstream", {"tls": {"upstreamCASecret": "ca"}}, "for a wss:// upstream"),
        ("tls.upstreamClientSecret in sidecar mode (ws://127.0.0.1 upstream)",
         {"mode": "sidecar", "tls": {"upstreamClientSecret": "cli"}}, "for a wss:// upstream"),
        ("replicas 2 with a generated token secret", {"replicaCount": 2}, "needs a token secret that every replica"),
        ("cluster.enabled true with a generated token secret", {"cluster": {"enabled": True}},
         "needs a token secret that every replica"),
        ("sidecar Deployment, 2 replicas, generated token secret",
         {"mode": "sidecar", "sidecar": {"deployment": {"enabled": True, "replicas": 2,
                                                         "backend": {"name": "b", "image": "b"}}}},
         "needs a token secret that every replica"),
        ("replicas 2 with cluster.enabled false", {"replicaCount": 2, "cluster": {"enabled": False},
                                                   "tokenSecret": {"existingSecret": "t"}}, "cluster.enabled false"),
        ("cluster.enabled yes", {"cluster": {"enabled": "yes"}}, "must be auto, true or false"),
        ("cluster.replicas below replicaCount", {"replicaCount": 3, "cluster": {"replicas": 2},
                                                 "tokenSecret": {"existingSecret": "t"}}, "must be at least replicaCount"),
        ("extraEnv TETHER_CLUSTER_INSTANCE in cluster mode",
         {"replicaCount": 3, "tokenSecret": {"existingSecret": "t"},
          "extraEnv": [{"name": "TETHER_CLUSTER_INSTANCE", "value": "x"}]}, "which the chart sets in cluster mode"),
        ("networkPolicy in sidecar mode without pod labels", {"mode": "sidecar", "networkPolicy": {"enabled": True}},
         "needs the pods' labels"),
        ("terminationGracePeriodSeconds too short", {"lifecycle": {"terminationGracePeriodSeconds": 25}},
         "must exceed"),
        ("short tokenSecret.value", {"tokenSecret": {"value": "short"}}, "at least 32"),
        ("tokenSecret.value and existingSecret", {"tokenSecret": {"value": "z" * 40, "existingSecret": "s"}},
         "not both"),
        ("unknown mode", {"mode": "daemonset"}, "standalone or sidecar"),
        ("bad shutdown_grace", {"config": {"server": {"shutdown_grace": "soon"}}}, "duration"),
        ("sidecar Deployment without a backend", {"mode": "sidecar", "sidecar": {"deployment": {"enabled": True}}},
         "backend"),
        ("sidecar PVC without claimName",
         {"mode": "sidecar", "sidecar": {"journal": {"type": "persistentVolumeClaim"},
                                         "deployment": {"enabled": True, "backend": {"name": "b", "image": "b"}}}},
         "claimName"),
        ("ServiceMonitor in sidecar mode without Services", {"mode": "sidecar", "serviceMonitor": {"enabled": True}},
         "needs the chart's Services"),
    ]
    for label, values, needle in cases:
        try:
            with quiet_stderr():
                render(CHART, values)
            R.check(f"rejects {label}", False, "rendered without error")
        except helm.HelmError as e:
            R.check(f"rejects {label}", needle in str(e), f"error does not mention {needle!r}: {e}")
    # The guard that refused replicas without affinity is gone, with its escape hatch.
    chart_text = "".join(p.read_text() for p in sorted((CHART / "templates").rglob("*")) if p.is_file()) + \
        (CHART / "values.yaml").read_text() + (CHART / "README.md").read_text()
    for gone in ("allowReplicasWithoutAffinity", "validateReplicas", "does NOT forward", "not forward resumes"):
        R.check(f"the chart no longer mentions {gone!r}", gone not in chart_text)


def readme_snippets() -> dict[str, str]:
    """Code blocks of the chart README marked <!-- check-helm: FILE -->."""
    text = (CHART / "README.md").read_text()
    found = re.findall(r"<!-- check-helm: (\S+) -->\s*```[a-z]*\n(.*?)```", text, re.S)
    return {name: body for name, body in found}


def check_parent_chart() -> None:
    """The README's "Sidecar in your own Deployment" snippet, as a real parent chart."""
    label = "parent chart"
    snippets = readme_snippets()
    need = ["Chart.yaml", "values.yaml", "templates/deployment.yaml"]
    if not R.check(f"{label}: README has the snippets {need}", all(n in snippets for n in need),
                   f"found {sorted(snippets)}"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "myapp"
        for name in need:
            (parent / name).parent.mkdir(parents=True, exist_ok=True)
            (parent / name).write_text(snippets[name])
        shutil.copytree(CHART, parent / "charts" / "tether")
        report = helm.lint(str(parent), strict=True, kube_version="v" + WANTED_KUBE)
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        R.check(f"{label}: lint --strict", not report.get("errors") and not bad,
                "; ".join(f"{m['path']}: {m['error']}" for m in bad) or "; ".join(report.get("errors", [])))
        rendered = render(parent, release="myapp", namespace="apps")
        docs = documents(rendered)
        validate_all(label, docs)
        R.check(f"{label}: no StatefulSet from the subchart", not by_kind(docs, "StatefulSet"))
        deps = by_kind(docs, "Deployment")
        if not R.check(f"{label}: one Deployment", len(deps) == 1):
            return
        dep = deps[0]
        pod = dep["spec"]["template"]["spec"]
        sub_values = merged(load_values(CHART / "values.yaml"), load_values(parent / "values.yaml")["tether"])
        check_tether_container(label, pod, sub_values, docs)
        backend_port = sub_values["sidecar"]["backendPort"]
        cfg = toml_of(docs)
        check_tether_toml(label, cfg, sub_values, f"ws://127.0.0.1:{backend_port}")
        R.check(f"{label}: the backend container listens on sidecar.backendPort",
                backend_port in [p.get("containerPort") for c in pod["containers"] if c["name"] != "tether"
                                 for p in c.get("ports", [])])
        labels = dep["spec"]["template"]["metadata"]["labels"]
        svcs = by_kind(docs, "Service")
        R.check(f"{label}: the subchart's Services select the parent's pods",
                len(svcs) == 2 and all(selects(s["spec"]["selector"], labels) for s in svcs),
                f"{[s['spec']['selector'] for s in svcs]} vs {labels}")
        R.check(f"{label}: checksum annotation from tether.config.toml",
                "checksum/tether-config" in (dep["spec"]["template"]["metadata"].get("annotations") or {}))


def main() -> int:
    global KUBE_VERSIONS
    start = time.monotonic()
    print(f"helm-python-sdk {helm.__version__} (libhelm_c {helm.helm_c_version()}, Helm {helm.helm_sdk_version()}); "
          f"kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else '?'}")
    KUBE_VERSIONS = kube_versions()
    print(f"schemas: Kubernetes {', '.join(kv_utils.major_minor(v) for v in KUBE_VERSIONS)}")
    defaults = load_values(CHART / "values.yaml")
    with helm.Chart.load(str(CHART)) as chart:
        meta = chart.metadata
    R.eq("values image.tag equals Chart.yaml appVersion", str(defaults["image"]["tag"]), str(meta.get("appVersion")))
    for name, fn in (
        ("config key list", check_key_list),
        ("lint", lambda: lint_all(defaults)),
        ("default values", lambda: check_default(defaults)),
        ("sidecar values", lambda: check_sidecar(defaults)),
        ("helm test hook", lambda: check_test_hook(defaults)),
        ("servicemonitor values", lambda: check_servicemonitor(defaults)),
        ("variants", lambda: check_variants(defaults)),
        ("monitoring", lambda: check_monitoring(defaults)),
        ("tls", lambda: check_tls(defaults)),
        ("cluster", lambda: check_cluster(defaults)),
        ("ingress", lambda: check_ingress(defaults)),
        ("sealed", lambda: check_sealed(defaults)),
        ("rejections", check_rejections),
        ("parent chart", check_parent_chart),
    ):
        R.run(name, fn)
    print(f"({time.monotonic() - start:.1f}s)")
    print(f"check-helm: {R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
