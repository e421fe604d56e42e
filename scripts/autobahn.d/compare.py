#!/usr/bin/env python3
"""Compares the Autobahn fuzzingclient reports of two agents.

Usage: compare.py INDEX_JSON BASELINE_AGENT AGENT [EXPECTED_NON_STRICT]

Reads wstest's reports/index.json ({agent: {case: {"behavior", ...}}}),
prints the per-agent counts of each behavior, every case the agent FAILED,
every case where it did worse than the baseline agent (the backend alone)
or closed with another close code than it, and one closing line `autobahn: N passed, N failed`, where a case passes if
neither agent FAILED it, the agent did no worse than the baseline, and
both sent the same close code (or none).
EXPECTED_NON_STRICT lists case ids (one a line, # comments) where the agent
may be NON-STRICT although the baseline is OK; the file says why. Exits 1
on any failure.
"""

import json
import sys
from collections import Counter

# Lower is better. INFORMATIONAL cases have no right answer.
RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1, "UNIMPLEMENTED": 2, "WRONG CODE": 2, "FAILED": 3}


def rank(result, key):
    return RANK.get(result.get(key, "FAILED"), 3)


def case_key(case_id):
    return [int(p) for p in case_id.split(".")]


def read_allowed(path):
    if path is None:
        return set()
    with open(path) as f:
        return {line.split("#")[0].strip() for line in f} - {""}


def worse(case, b, t, key, allowed):
    """True if the agent's result `t` is worse than the baseline's `b`."""
    if key == "behavior" and case in allowed and t.get(key) == "NON-STRICT":
        return False
    return rank(t, key) > rank(b, key)


def main():
    path, base, agent = sys.argv[1:4]
    allowed = read_allowed(sys.argv[4] if len(sys.argv) > 4 else None)
    with open(path) as f:
        index = json.load(f)
    missing = [a for a in (base, agent) if a not in index]
    if missing:
        print("autobahn: no report for %s in %s" % (", ".join(missing), path))
        print("autobahn: 0 passed, 1 failed")
        return 1
    for a in (base, agent):
        counts = Counter(r["behavior"] for r in index[a].values())
        print("%-8s %s" % (a, ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
    passed = failed = 0
    for case in sorted(set(index[base]) | set(index[agent]), key=case_key):
        b, t = index[base].get(case, {}), index[agent].get(case, {})
        problems = []
        for who, r in ((base, b), (agent, t)):
            if r.get("behavior", "FAILED") == "FAILED":
                problems.append("%s FAILED" % who)
        for key in ("behavior", "behaviorClose"):
            if worse(case, b, t, key, allowed):
                problems.append("%s %s %s is worse than %s %s" % (agent, key, t.get(key), base, b.get(key)))
        # Autobahn grades a dropped TCP connection as an acceptable way to
        # fail on a protocol error, so the grades alone do not see a missing
        # close frame (RFC 6455 7.1.7): the close code must match too.
        if b.get("remoteCloseCode") != t.get("remoteCloseCode"):
            problems.append(
                "%s closed with %s where %s closed with %s"
                % (agent, t.get("remoteCloseCode"), base, b.get("remoteCloseCode"))
            )
        if problems:
            failed += 1
            print("case %s: %s" % (case, "; ".join(problems)))
        else:
            passed += 1
    print("autobahn: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
