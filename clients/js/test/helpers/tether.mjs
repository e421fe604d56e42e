import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./proxy.mjs";
import { until } from "./wait.mjs";

export const TETHER_BIN = process.env.TETHER_BIN
  ?? join(process.env.CARGO_TARGET_DIR ?? "/var/tmp/tether-target", "release", "tether");

/**
 * A real tether on free loopback ports with its journal in a temp dir.
 * `restart()` brings it back on the same ports and journal.
 */
export async function startTether({ upstream, stamp = "prefix", maxSessionFrames = 100000, linger = "2m" }) {
  const dir = mkdtempSync(join(tmpdir(), "tether-js-"));
  const dataPort = await freePort();
  const adminPort = await freePort();
  const config = join(dir, "tether.toml");
  writeFileSync(config, `
[server]
listen = "127.0.0.1:${dataPort}"
admin_listen = "127.0.0.1:${adminPort}"
upstream = "${upstream}"
shutdown_grace = "5s"
[session]
linger = "${linger}"
[stamp]
mode = "${stamp}"
[journal]
data_dir = "${join(dir, "journal")}"
max_session_frames = ${maxSessionFrames}
[log]
level = "warn"
`);
  const admin = `http://127.0.0.1:${adminPort}`;
  const t = {
    url: `ws://127.0.0.1:${dataPort}`,
    dataPort,
    dir,
    log: "",
    proc: null,
    exited: null,
    async start() {
      const proc = spawn(TETHER_BIN, ["--config", config], { stdio: ["ignore", "ignore", "pipe"] });
      proc.stderr.on("data", (d) => { t.log += d; });
      t.proc = proc;
      t.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
      let gone = false;
      t.exited.then(() => { gone = true; });
      await until(async () => {
        if (gone) throw new Error(`tether exited at start:\n${t.log}`);
        try { return (await fetch(`${admin}/readyz`)).status === 200; } catch { return false; }
      }, "tether /readyz");
    },
    /** SIGTERM: tether drains (draining + 1012) and exits. */
    async stop(signal = "SIGTERM") {
      if (!t.proc || t.proc.exitCode !== null || t.proc.signalCode !== null) return;
      t.proc.kill(signal);
      return t.exited;
    },
    async restart() {
      await t.stop();
      await t.start();
    },
    async metrics() {
      return (await fetch(`${admin}/metrics`)).text();
    },
    /** Sum of the samples of `name` whose labels contain every `labels` pair. */
    async metric(name, labels = {}) {
      let sum = 0;
      for (const line of (await t.metrics()).split("\n")) {
        const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
        if (!m || m[1] !== name) continue;
        if (Object.entries(labels).every(([k, v]) => (m[2] ?? "").includes(`${k}="${v}"`))) sum += Number(m[3]);
      }
      return sum;
    },
    async cleanup() {
      await t.stop("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await t.start();
  return t;
}
