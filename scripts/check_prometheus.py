#!/usr/bin/env python3
"""A real Prometheus scraping a real tether (run through scripts/check-prometheus).

1. Starts `tether demo` (its built-in ticking backend, tether in front of it,
   and its scripted client that drops its TCP connection and resumes) on
   loopback ports with a temporary journal, journal.sync = interval and
   journal.max_session_frames = 16.
2. Starts prometheus (temporary storage, scrape and rule evaluation every 1 s)
   scraping tether's admin port, with the alerting rules of
   helm/tether/files/prometheus/tether-rules.yaml loaded.
3. Makes more happen: a non-upgrade GET (400 not_websocket), upgrades with a
   malformed token (400 malformed_token) and a forged one (401
   invalid_token), and a client of its own that sends a
   message upstream, drops its TCP connection, stays away until the journal
   trimmed the frames it needs (max_frames) and resumes: outcome gap, reason
   trimmed.
4. Queries Prometheus' HTTP API for the exact series and values, checks that
   the rules loaded and evaluate, that TetherGapResumes went pending after the
   gap, and evaluates every PromQL expression of the Grafana dashboard: an
   error or an empty result fails. Also checks the dashboard is valid Grafana
   JSON (schemaVersion, unique panel ids, datasource variable, grid).

Waits are bounded polls on conditions (a scrape that shows the event), never a
fixed sleep used as synchronisation. Prints `prometheus: N passed, N failed`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "tether" / "files" / "prometheus" / "tether-rules.yaml"
DASHBOARD = ROOT / "helm" / "tether" / "files" / "grafana" / "tether-dashboard.json"
BIN = os.environ.get("TETHER_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "/var/tmp/tether-target"), "release", "tether")
# Everything below waits on conditions, each bounded by this overall deadline.
DEADLINE = time.monotonic() + float(os.environ.get("CHECK_PROMETHEUS_TIMEOUT", "180"))
# What the dashboard's $__rate_interval stands for here: wider than the whole
# run, so every rate covers all of its activity.
RATE_INTERVAL = "5m"
MAX_SESSION_FRAMES = 16

passed = failed = 0


def check(name: str, ok: bool, detail: str = "") -> bool:
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
    return ok


class Timeout(Exception):
    pass


def wait_for(what: str, fn: Callable[[], Any], limit: float = 60.0) -> Any:
    """Polls fn until it returns something truthy; bounded by `limit` and DEADLINE."""
    end = min(time.monotonic() + limit, DEADLINE)
    last_err = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - not there yet
            last_err = e
        time.sleep(0.2)
    raise Timeout(f"timed out waiting for {what}" + (f" (last error: {last_err})" if last_err else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# --- a minimal WebSocket client (RFC 6455, client side) ------------------------


class WS:
    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in head.decode().split("\r\n")[1:])}

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_text(self) -> str:
        """The next text message (pings answered, other frames skipped)."""
        while True:
            b0, b1 = self._read(2)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)
            if op == 0x1:
                return payload.decode()
            if op == 0x8:
                raise ConnectionError(f"close frame {payload[:2].hex()}")
            if op == 0x9:
                self._send(0xA, payload)

    def _send(self, op: int, payload: bytes) -> None:
        mask = secrets.token_bytes(4)
        n = len(payload)
        head = bytes([0x80 | op])
        if n < 126:
            head += bytes([0x80 | n])
        else:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self) -> None:
        """A clean close (1000), waiting for the server's close frame."""
        self._send(0x8, (1000).to_bytes(2, "big"))
        try:
            while True:
                self.recv_text()
        except (ConnectionError, OSError):
            pass
        self.sock.close()

    def drop(self) -> None:
        """Vanishes without a close frame, like a phone entering a tunnel."""
        self.sock.close()


def welcome(ws: WS) -> dict[str, Any]:
    text = ws.recv_text()
    if not text.startswith("#"):
        raise AssertionError(f"expected a welcome control frame, got {text!r}")
    return json.loads(text[1:])


def seq_of(frame: str) -> int:
    return int(frame.split(":", 1)[0])


# --- Prometheus API ------------------------------------------------------------


class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=10)
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise RuntimeError(f"{path} {params}: HTTP {status}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that returns one series; None if it returns none."""
        res = self.query(expr)
        if len(res) > 1:
            raise AssertionError(f"{expr} returned {len(res)} series")
        return float(res[0]["value"][1]) if res else None


# --- the run -------------------------------------------------------------------


def main() -> int:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    tmp = tempfile.TemporaryDirectory(prefix="tether-check-prometheus.")
    work = Path(tmp.name)

    def stop_all() -> None:
        for name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if name == "tether" else signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        return run(work, procs)
    except Timeout as e:
        check("bounded wait", False, str(e))
        return 1
    finally:
        stop_all()
        for name, _ in procs:
            log = work / f"{name}.log"
            if failed and log.exists():
                print(f"--- {name}.log (last 30 lines)")
                print("\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        tmp.cleanup()
        print(f"prometheus: {passed} passed, {failed} failed")


def run(work: Path, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> int:
    if not os.access(BIN, os.X_OK):
        check(f"tether binary at {BIN}", False, "build it (cargo build --release) or set TETHER_BIN")
        return 1
    version = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout.splitlines()
    print(f"{version[0] if version else 'prometheus ?'}; tether {BIN}")
    data, admin, prom_port = free_port(), free_port(), free_port()

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
        procs.append((name, p))
        return p

    tether = start("tether", [BIN, "demo", "--listen", f"127.0.0.1:{data}", "--admin-listen",
                              f"127.0.0.1:{admin}", "--data-dir", str(work / "journal")],
                   env={"TETHER_JOURNAL_SYNC": "interval",
                        "TETHER_JOURNAL_MAX_SESSION_FRAMES": str(MAX_SESSION_FRAMES),
                        "TETHER_TOKEN_SECRET": "check" + secrets.token_hex(20),
                        "TETHER_LOG_LEVEL": "info"})
    (work / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "tether", "static_configs": [{"targets": [f"127.0.0.1:{admin}"]}]}],
    }))
    start("prometheus", ["prometheus", f"--config.file={work / 'prometheus.yml'}",
                         f"--storage.tsdb.path={work / 'prometheus-data'}",
                         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
    prom = Prom(prom_port)

    def alive() -> None:
        for name, p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}")

    def up() -> bool:
        alive()
        return prom.value('up{job="tether"}') == 1

    wait_for("prometheus to scrape tether (up == 1)", up, 60)
    check("prometheus scrapes tether's /metrics (up == 1)", True)

    # 1. The demo: a new session, a TCP drop, a resume with a replay.
    def demo_resumed() -> bool:
        alive()
        return prom.value('tether_resumes_total{outcome="resumed",reason="none"}') == 1

    wait_for("the demo client's resume to be scraped", demo_resumed, 60)
    check("the demo's drop and resume are scraped", True)
    # The demo closes with 1000 after its resume: wait until that is scraped, so
    # its session no longer receives frames from the backend.
    wait_for("the demo client's clean close", lambda: (alive(), prom.value(
        'tether_client_disconnects_total{kind="clean"}'))[1] == 1, 60)

    # 2. Refusals: a plain GET and a forged token.
    status, body = http_get(f"http://127.0.0.1:{data}/")
    check("a plain GET gets 400 not_websocket", status == 400 and "not_websocket" in body, f"{status} {body}")
    bad = WS(data, "/malformed", {"Tether-Session": "not-a-token", "Tether-Offset": "3"})
    check("an upgrade with a malformed token gets 400", bad.status == 400, f"{bad.status} {bad.headers}")
    bad.drop()

    # 3. A client of its own: a message upstream, a TCP drop, a resume after the
    # journal trimmed what it needed (journal.max_session_frames).
    # Frames trimmed so far (the demo's session, over by now, may have had some).
    trimmed_before = prom.value('tether_trimmed_frames_total{reason="max_frames"}') or 0
    ws = WS(data, "/gap")
    check("our client: 101", ws.status == 101, str(ws.status))
    hello = welcome(ws)
    check("our client: outcome new", hello.get("outcome") == "new", str(hello))
    first = seq_of(ws.recv_text())
    # A forged token: ours with one character of its MAC changed.
    token = hello["session"]
    forged_token = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    forged = WS(data, "/gap", {"Tether-Session": forged_token, "Tether-Offset": str(first)})
    check("an upgrade with a forged token gets 401", forged.status == 401, f"{forged.status} {forged.headers}")
    forged.drop()
    ws.send_text("hello")
    while not ws.recv_text().split(":", 1)[1].startswith("echo: hello"):
        pass
    ws.drop()

    # A gap needs offset + 1 < the first retained seq: two frames trimmed
    # (only this session reaches max_session_frames).
    def trimmed() -> bool:
        alive()
        return (prom.value('tether_trimmed_frames_total{reason="max_frames"}') or 0) >= trimmed_before + first + 1

    wait_for("the journal to trim our session (max_frames)", trimmed, 60)
    ws = WS(data, "/gap", {"Tether-Session": hello["session"], "Tether-Offset": str(first)})
    again = welcome(ws)
    gap = again.get("gap") or {}
    check("our resume: outcome gap, reason trimmed",
          again.get("outcome") == "gap" and gap.get("reason") == "trimmed", str(again))
    check("our resume: frames after the trimmed ones are replayed", (again.get("replay") or {}).get("from") ==
          gap.get("first_available"), str(again))
    ws.recv_text()
    ws.close()

    # 4. The exact series, once the last event is scraped.
    wait_for("our clean close to be scraped", lambda: (alive(), prom.value(
        'tether_client_disconnects_total{kind="clean"}'))[1] == 2, 60)
    wait_for("the delivery lag to be scraped at 0 and no session attached", lambda: (alive(), prom.value(
        'tether_delivery_lag_frames') == 0 and prom.value('tether_sessions{state="attached"}') == 0)[1], 60)

    # rate() needs two samples of a series: the scrape above already holds
    # every series (the gap came before our close); wait for two more scrapes.
    scrapes = prom.value('count_over_time(up{job="tether"}[10m])') or 0
    wait_for("two more scrapes", lambda: (alive(), prom.value(
        'count_over_time(up{job="tether"}[10m])') or 0)[1] >= scrapes + 2, 60)

    exact = [
        ('up{job="tether"}', 1),
        ('tether_build_info{version="0.1.0"}', 1),
        ('tether_resumes_total{outcome="new",reason="none"}', 2),
        ('tether_resumes_total{outcome="resumed",reason="none"}', 1),
        ('tether_resumes_total{outcome="gap",reason="trimmed"}', 1),
        ('tether_refusals_total{status="400",error="not_websocket"}', 1),
        ('tether_refusals_total{status="401",error="invalid_token"}', 1),
        ('tether_refusals_total{status="400",error="malformed_token"}', 1),
        ('tether_client_disconnects_total{kind="abnormal"}', 2),
        ('tether_client_disconnects_total{kind="clean"}', 2),
        ('tether_backend_connects_total{result="ok"}', 2),
        ('tether_frames_total{direction="upstream"}', 1),
        ('tether_bytes_total{direction="upstream"}', len("hello")),
        ('tether_sessions{state="attached"}', 0),
        ('tether_delivery_lag_frames', 0),
        ('tether_journal_write_errors_total', 0),
        ('count(tether_resumes_total > 0)', 3),
        ('count(tether_refusals_total > 0)', 3),
    ]
    for expr, want in exact:
        got = prom.value(expr)
        check(f"{expr} == {want}", got == want, f"got {got}")
    at_least = [
        ('tether_frames_total{direction="downstream"}', MAX_SESSION_FRAMES + 1),
        ('tether_journal_appends_total', MAX_SESSION_FRAMES + 1),
        ('tether_replayed_frames_total', 1),
        ('tether_replay_seconds_count', 1),
        ('tether_trimmed_frames_total{reason="max_frames"}', 1),
        ('tether_journal_append_seconds_count', MAX_SESSION_FRAMES + 1),
        ('tether_journal_batch_ops_count', 1),
        ('tether_journal_fsyncs_total{trigger="interval"}', 1),
        ('tether_journal_disk_bytes', 1),
        ('tether_journal_retained_bytes', 1),
    ]
    for expr, want in at_least:
        got = prom.value(expr)
        check(f"{expr} >= {want}", got is not None and got >= want, f"got {got}")
    # Every downstream frame is journaled: the two counters agree once no
    # backend connection is sending.
    appends = prom.value("tether_journal_appends_total")
    downstream = prom.value('tether_frames_total{direction="downstream"}')
    check('tether_journal_appends_total == tether_frames_total{direction="downstream"}',
          appends == downstream, f"{appends} vs {downstream}")
    states = {r["metric"].get("state"): float(r["value"][1]) for r in prom.query("tether_sessions")}
    check("tether_sessions has the four states", set(states) == {"attached", "detached", "orphaned", "ended"},
          str(states))
    check("tether_sessions: our two sessions are held", sum(states.values()) == 2, str(states))

    # 5. The alerting rules, loaded and evaluated by this Prometheus.
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    check("prometheus loaded the 7 alerting rules", len([r for r in rules if r["type"] == "alerting"]) == 7,
          str([r.get("name") for r in rules]))

    def evaluated() -> bool:
        rs = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return all(r.get("lastEvaluation", "").startswith("20") and r.get("health") == "ok" for r in rs)

    wait_for("every rule to be evaluated", evaluated, 30)
    bad = [(r["name"], r.get("health"), r.get("lastError")) for g in prom.api("rules")["groups"]
           for r in g["rules"] if r.get("health") != "ok"]
    check("every rule evaluates without error", not bad, str(bad))

    def gap_alert() -> dict[str, Any] | None:
        return next((a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "TetherGapResumes"), None)

    alert = wait_for("TetherGapResumes to go pending", gap_alert, 30)
    check("TetherGapResumes is pending after the gap (for: 10m)", alert["state"] == "pending", str(alert))
    check("TetherGapResumes carries job and instance",
          alert["labels"].get("job") == "tether" and alert["labels"].get("instance") == f"127.0.0.1:{admin}",
          str(alert["labels"]))
    others = sorted(a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]
                    if a["labels"]["alertname"] != "TetherGapResumes")
    check("no other alert is active", not others, str(others))

    # 6. The dashboard: valid Grafana JSON, every expression returns data.
    check_dashboard(prom)
    return 1 if failed else 0


def check_dashboard(prom: Prom) -> None:
    dash = json.loads(DASHBOARD.read_text())
    check("dashboard: schemaVersion is an integer >= 36", isinstance(dash.get("schemaVersion"), int)
          and dash["schemaVersion"] >= 36, str(dash.get("schemaVersion")))
    check("dashboard: title and uid", bool(dash.get("title")) and bool(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}",
                                                                                    dash.get("uid", ""))))
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    check("dashboard: a datasource variable of type prometheus",
          ds.get("type") == "datasource" and ds.get("query") == "prometheus", str(ds))
    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    check("dashboard: panel ids are unique integers", len(ids) == len(set(ids)) and all(isinstance(i, int)
                                                                                        for i in ids), str(ids))
    check("dashboard: panels fit the 24-column grid",
          all(0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 and p["gridPos"]["h"] > 0
              for p in panels))
    graphs = [p for p in panels if p.get("type") != "row"]
    check("dashboard: every panel queries through the datasource variable",
          all(p.get("datasource", {}).get("uid") == "${datasource}" and
              all(t.get("datasource", {}).get("uid") == "${datasource}" for t in p.get("targets", []))
              for p in graphs))
    check("dashboard: every panel has targets with unique refIds",
          all(p.get("targets") and len({t["refId"] for t in p["targets"]}) == len(p["targets"]) for p in graphs))
    want_titles = ["Sessions by state", "Delivery rate", "Delivery lag", "Connections by resume outcome", "Replay",
                   "Gaps", "Trimmed frames", "Journal append latency", "Journal disk", "Refusals"]
    titles = [p.get("title") for p in graphs]
    check("dashboard: has the panels the issue asks for", all(t in titles for t in want_titles),
          f"missing {[t for t in want_titles if t not in titles]}")

    # The instance variable's values.
    inst = variables.get("instance", {})
    m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", (inst.get("query") or {}).get("query", ""))
    if check("dashboard: instance variable is label_values(<metric>, instance)", m is not None, str(inst)):
        values = prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
        check(f"dashboard: variable instance has values ({values})", bool(values))

    exprs = 0
    for p in graphs:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$instance", ".*")
            left = re.findall(r"\$\w+", expr)
            name = f"dashboard: {p['title']} / {t['refId']}: {t['expr']}"
            if not check(f"{name} uses known variables", not left, str(left)):
                continue
            exprs += 1
            try:
                res = prom.query(expr)
            except Exception as e:  # noqa: BLE001
                check(name, False, str(e))
                continue
            nan = [r["metric"] for r in res if math.isnan(float(r["value"][1]))]
            check(f"{name} -> {len(res)} series", bool(res) and not nan,
                  "empty result" if not res else f"NaN for {nan}")
    check("dashboard: expressions evaluated", exprs >= 20, str(exprs))


if __name__ == "__main__":
    sys.exit(main())
