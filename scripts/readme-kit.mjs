// What the scripts that run READMEs as written share (scripts/newcomer.mjs,
// scripts/client-readmes.mjs): fenced blocks by section, children in their
// own process groups with their output awaited, named checks and one
// closing line.
import { spawn } from "node:child_process";

const procs = new Set();
const results = [];
const started = Date.now();
// Whatever happens, no child outlives the script (each runs in its own process group).
process.on("exit", () => {
  for (const p of procs) try { process.kill(-p.child.pid, "SIGKILL"); } catch {}
});

/** Fenced code blocks of the `##` sections named (every section if none), with their line numbers. */
export function blocks(text, sections = null) {
  const out = [];
  let section = null, open = null;
  text.split("\n").forEach((line, i) => {
    if (open) {
      if (line.startsWith("```")) { out.push(open); open = null; } else open.text += line + "\n";
    } else if (line.startsWith("## ")) {
      section = line.slice(3).trim();
    } else if (line.startsWith("```") && (!sections || sections.includes(section))) {
      open = { section, lang: line.slice(3).trim(), line: i + 1, text: "" };
    }
  });
  return out;
}

/** A child in its own process group, its stdout and stderr collected. */
export function run(command, { cwd, env = {} } = {}) {
  const child = spawn("bash", ["-c", command], { cwd, env: { ...process.env, ...env }, detached: true });
  const p = { command, child, out: "", waiters: [] };
  const feed = (d) => {
    p.out += d;
    p.waiters = p.waiters.filter((w) => !w.check());
  };
  child.stdout.on("data", feed);
  child.stderr.on("data", feed);
  p.exit = new Promise((resolve) => child.once("exit", (code, signal) => {
    procs.delete(p);
    p.exited = { code, signal };
    p.waiters.forEach((w) => w.fail());
    resolve(p.exited);
  }));
  /**
   * Resolves with `test(output)` once it is truthy; fails if the child exits
   * first, or after `ms` (a bound on a hung step, not a pace).
   */
  p.until = (test, what, ms = 60_000) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => w.fail("timed out"), ms);
    const w = {
      check() {
        const r = test(p.out);
        if (r) { clearTimeout(timer); resolve(r); }
        return Boolean(r);
      },
      fail(why = `exited (${JSON.stringify(p.exited)})`) {
        clearTimeout(timer);
        reject(new Error(`${what}: ${why} running\n  ${command}\noutput:\n${p.out.slice(-3000)}`));
      },
    };
    if (!w.check()) {
      if (p.exited) w.fail(); else p.waiters.push(w);
    }
  });
  p.waitFor = (re, what, ms) => p.until((out) => re.exec(out), what, ms);
  /** The exit status, within `ms`. */
  p.done = (ms) => Promise.race([p.exit, new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`still running after ${ms / 1000} s: ${command}\n${p.out.slice(-3000)}`)), ms).unref())]);
  /** SIGINT to the whole group (Ctrl-C), then its exit status. */
  p.interrupt = async () => {
    if (!p.exited) {
      try { process.kill(-child.pid, "SIGINT"); } catch {}
    }
    return p.exit;
  };
  procs.add(p);
  return p;
}

/** Runs one named check; prints `ok` or `FAIL` with the error. */
export async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push(true);
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push(false);
    console.log(`FAIL ${name}\n${e.stack ?? e}`);
  }
}

/** The seqs of `lines` that match `re` (group 1), which must be consecutive. */
export function consecutive(out, re, what) {
  const seqs = [...out.matchAll(re)].map((m) => Number(m[1]));
  for (let i = 1; i < seqs.length; i++) {
    if (seqs[i] !== seqs[i - 1] + 1) throw new Error(`${what}: seq ${seqs[i]} after ${seqs[i - 1]}:\n${out}`);
  }
  return seqs;
}

/**
 * Stops every child, then runs `cleanup`, prints `<name>: N passed, N
 * failed (T s)` and exits with the verdict.
 */
export async function finish(name, cleanup = () => {}) {
  for (const p of procs) await p.interrupt();
  cleanup();
  const passed = results.filter(Boolean).length;
  console.log(`${name}: ${passed} passed, ${results.length - passed} failed (${((Date.now() - started) / 1000).toFixed(0)} s)`);
  process.exit(results.length - passed === 0 ? 0 : 1);
}
