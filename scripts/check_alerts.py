#!/usr/bin/env python3
"""Checks tether's Prometheus alerting rules (run through scripts/check-alerts).

  - `promtool check rules` on helm/tether/files/prometheus/tether-rules.yaml
    (deploy/prometheus/tether-rules.yaml links to it);
  - `promtool test rules` on deploy/prometheus/tether-rules.test.yaml;
  - every alert has a test where it fires and one where it does not;
  - the tests bite: for each alert, a copy of the rules whose expression never
    fires, and one whose expression always fires, must each fail the tests;
  - docs/METRICS.md's table shows each alert's expression and `for`;
  - every metric an expression uses is one tether exports (the families
    registered in src/, today src/metrics.rs; histograms as _bucket/_sum/_count).

Prints one line per check and `check-alerts: N passed, N failed`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "tether" / "files" / "prometheus" / "tether-rules.yaml"
LINK = ROOT / "deploy" / "prometheus" / "tether-rules.yaml"
TESTS = ROOT / "deploy" / "prometheus" / "tether-rules.test.yaml"
METRICS_MD = ROOT / "docs" / "METRICS.md"
SRC = ROOT / "src"

passed = failed = 0


def check(name: str, ok: bool, detail: str = "") -> bool:
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))
    return ok


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def tether_metric_names() -> set[str]:
    """Series names tether's /metrics can carry, from the registered families."""
    # src/metrics.rs today (families made by `f.counter("tether_…", …)` and
    # friends); every source file, in case it moves.
    text = "\n".join(p.read_text() for p in sorted(SRC.rglob("*.rs")))
    names: set[str] = set()
    pattern = r'(histogram_opts!\(\s*|opts!\(\s*|::new\(\s*|\.(?:counters?|gauges?|histogram)\(\s*)"(tether_[a-z0-9_]+)"'
    for m in re.finditer(pattern, text):
        kind, name = m.group(1), m.group(2)
        if kind.startswith(("histogram_opts", ".histogram")):
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def alert_rules(doc: dict) -> list[dict]:
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def main() -> int:
    version = promtool("--version").stdout.splitlines()[:1]
    print(f"promtool: {version[0] if version else '?'}")

    check("deploy/prometheus/tether-rules.yaml is the chart's rules file",
          LINK.resolve() == RULES.resolve(), f"{LINK} -> {LINK.resolve()}")
    r = promtool("check", "rules", str(RULES))
    check("promtool check rules", r.returncode == 0, (r.stdout + r.stderr).strip())
    r = promtool("test", "rules", TESTS.name, cwd=TESTS.parent)
    check("promtool test rules", r.returncode == 0, (r.stdout + r.stderr).strip())

    rules_doc = yaml.safe_load(RULES.read_text())
    tests_doc = yaml.safe_load(TESTS.read_text())
    alerts = alert_rules(rules_doc)
    names = [a["alert"] for a in alerts]
    check("alert names are unique", len(names) == len(set(names)), f"{names}")

    fires: dict[str, int] = {n: 0 for n in names}
    quiet: dict[str, int] = {n: 0 for n in names}
    for t in tests_doc["tests"]:
        for a in t.get("alert_rule_test", []):
            target = fires if a.get("exp_alerts") else quiet
            if a["alertname"] in target:
                target[a["alertname"]] += 1
            else:
                check(f"test {t.get('name')!r} names a known alert", False, a["alertname"])
    for n in names:
        check(f"{n}: a test where it fires", fires[n] > 0)
        check(f"{n}: a test where it does not fire", quiet[n] > 0)

    # Mutants: each must make `promtool test rules` fail.
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        shutil.copy(TESTS, tmpdir / TESTS.name)
        for n in names:
            for label, expr in (
                ("never fires", "vector(1) < 0"),
                # Every input series' job/instance, whatever its value.
                ("always fires", 'max by (job, instance) ({__name__=~"tether_.+"})'),
            ):
                doc = yaml.safe_load(RULES.read_text())
                for rule in alert_rules(doc):
                    if rule["alert"] == n:
                        rule["expr"] = expr
                (tmpdir / "tether-rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
                r = promtool("test", "rules", TESTS.name, cwd=tmpdir)
                check(f"{n}: the tests catch an expression that {label}", r.returncode != 0,
                      "promtool test rules still passes")
        # The branch for a series that has just appeared (tether creates
        # labelled series at their first event, with the value 1).
        for n, rule in ((a["alert"], a) for a in alerts if " unless " in a["expr"]):
            doc = yaml.safe_load(RULES.read_text())
            for r2 in alert_rules(doc):
                if r2["alert"] == n:
                    r2["expr"] = r2["expr"].split(" or ")[0]
            (tmpdir / "tether-rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            r = promtool("test", "rules", TESTS.name, cwd=tmpdir)
            check(f"{n}: the tests catch the expression without its new-series branch", r.returncode != 0,
                  "promtool test rules still passes")

    known = tether_metric_names()
    check("src/ registers tether's metric families", len(known) >= 19, f"found {sorted(known)}")
    for a in alerts:
        used = set(re.findall(r"\btether_[a-z0-9_]+", a["expr"]))
        unknown = sorted(used - known)
        check(f"{a['alert']}: uses only metrics tether exports ({', '.join(sorted(used))})",
              bool(used) and not unknown, f"unknown: {unknown}")

    # docs/METRICS.md's table of alerts shows the file's expressions and `for`.
    doc = METRICS_MD.read_text()
    for a in alerts:
        m = re.search(r"^\| `" + re.escape(a["alert"]) + r"` \| `(.*?)` \| (\S*) ?\|", doc, re.M)
        check(f"{a['alert']}: docs/METRICS.md shows its expression and for",
              m is not None and m.group(1) == a["expr"] and m.group(2) == a.get("for", ""),
              f"docs: {m.groups() if m else None}, file: {a['expr']!r} for {a.get('for', '')!r}")

    print(f"check-alerts: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
