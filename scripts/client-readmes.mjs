// The client libraries' READMEs, run as written (scripts/client-readmes runs
// it): every fenced block of clients/js/README.md and clients/rust/README.md
// against a real `tether demo` on free ports (the only change made to them:
// ws://127.0.0.1:8080/demo becomes the demo's URL). A block this script
// does not know fails it, so a new example cannot go untested. The Python
// client's README is run by scripts/test-python, the top-level one by
// scripts/newcomer.
//
// Env: TETHER_BIN (default $CARGO_TARGET_DIR/release/tether), CARGO_TARGET_DIR.
// Prints one line per check and ends with `client-readmes: N passed, N failed`.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "../clients/js/test/helpers/proxy.mjs";
import { blocks, check, consecutive, finish, run } from "./readme-kit.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tether = process.env.TETHER_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "release/tether");
const scratch = mkdtempSync(join(tmpdir(), "tether-client-readmes-"));
// Inside clients/js, so that `@tether/client` resolves to the package itself and `ws` to its dev dependency.
const jsApp = mkdtempSync(join(root, "clients/js/.readme-"));
const cleanup = () => {
  rmSync(scratch, { recursive: true, force: true });
  rmSync(jsApp, { recursive: true, force: true });
  rmSync(join(root, "clients/js/tether-client-0.1.0.tgz"), { force: true });
};

const [data, admin, pagePort] = [await freePort(), await freePort(), await freePort()];
const url = `ws://127.0.0.1:${data}/demo`;
const ports = (s) => s.replaceAll("ws://127.0.0.1:8080/demo", url);

/** The README's blocks, sorted by language; fails on a language this script does not run. */
function readme(path, counts) {
  const all = blocks(readFileSync(join(root, path), "utf8"));
  const by = Object.fromEntries(Object.keys(counts).map((lang) => [lang, all.filter((b) => b.lang === lang)]));
  const unknown = all.filter((b) => !(b.lang in counts));
  if (unknown.length) throw new Error(`${path}: not run by scripts/client-readmes: ${unknown.map((b) => `line ${b.line} (${b.lang || "no language"})`).join(", ")}`);
  for (const [lang, n] of Object.entries(counts)) {
    if (by[lang].length !== n) throw new Error(`${path}: expected ${n} ${lang} block(s), found ${by[lang].length}`);
  }
  return by;
}

/** The code of an example after its leading `//!` comment: what the README shows. */
function exampleBody(name) {
  const lines = readFileSync(join(root, "clients/rust/examples", `${name}.rs`), "utf8").split("\n");
  let i = 0;
  while (lines[i].startsWith("//!")) i++;
  while (lines[i] === "") i++;
  return lines.slice(i).join("\n").trimEnd() + "\n";
}

/** Stdout lines `<seq> <rest>`: seqs 1..=5, consecutive; returns the rests. */
function fiveInOrder(out, re, what) {
  const seqs = consecutive(out, re, what);
  if (seqs.join(",") !== "1,2,3,4,5") throw new Error(`${what}: seqs ${seqs}, expected 1..5:\n${out}`);
  return [...out.matchAll(re)].map((m) => m[2]);
}

let demo;
await check("tether demo: ready on free ports", async () => {
  demo = run(`"${tether}" demo --listen 127.0.0.1:${data} --admin-listen 127.0.0.1:${admin} `
    + `--demo-page-listen 127.0.0.1:${pagePort} --data-dir "${scratch}/journal" --log-level warn`, { cwd: root });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (demo.exited) throw new Error(`the demo exited (${JSON.stringify(demo.exited)}):\n${demo.out}`);
    const ok = await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`not ready within 60 s:\n${demo.out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

let js;
await check("clients/js/README.md: its blocks are one install (sh) and two examples (js)", async () => {
  js = readme("clients/js/README.md", { sh: 1, js: 2 });
});

await check("clients/js/README.md: the install block, from the checkout's root", async () => {
  const p = run(`set -euo pipefail\n${js.sh[0].text}`, { cwd: root });
  if ((await p.done(300_000)).code !== 0) throw new Error(`exit ${JSON.stringify(p.exited)}:\n${p.out}`);
  for (const f of ["clients/js/dist/index.js", "clients/js/tether-client-0.1.0.tgz"]) {
    if (!existsSync(join(root, f))) throw new Error(`${f} missing after the install block:\n${p.out}`);
  }
});

await check("clients/js/README.md: the first example prints seqs 1..5 in Node and exits", async () => {
  writeFileSync(join(jsApp, "follow.mjs"), ports(js.js[0].text));
  const p = run("node follow.mjs", { cwd: jsApp });
  if ((await p.done(60_000)).code !== 0) throw new Error(`exit ${JSON.stringify(p.exited)}:\n${p.out}`);
  const rests = fiveInOrder(p.out, /^(\d+) (.*)$/gm, "node follow.mjs");
  const ticks = rests.filter((r) => r !== "echo: hello");
  if (rests.length - ticks.length !== 1) throw new Error(`expected one "echo: hello":\n${p.out}`);
  if (ticks.join(",") !== ticks.map((_, i) => `tick ${i + 1}`).join(",")) throw new Error(`ticks out of order:\n${p.out}`);
});

await check("clients/js/README.md: the upstream example prints acked three times and exits", async () => {
  writeFileSync(join(jsApp, "upstream.mjs"), ports(js.js[1].text));
  const p = run("node upstream.mjs", { cwd: jsApp });
  if ((await p.done(60_000)).code !== 0) throw new Error(`exit ${JSON.stringify(p.exited)}:\n${p.out}`);
  if (p.out !== "acked\nacked\nacked\n") throw new Error(`printed:\n${p.out}`);
});

let rs;
await check("clients/rust/README.md: its blocks are Cargo.toml lines and the minimal and orders examples", async () => {
  rs = readme("clients/rust/README.md", { toml: 1, rust: 2 });
  for (const [i, name] of ["minimal", "orders"].entries()) {
    if (rs.rust[i].text !== exampleBody(name)) throw new Error(`README's Rust block ${i + 1} differs from clients/rust/examples/${name}.rs`);
  }
});

await check("clients/rust/README.md: the Cargo.toml lines name this checkout's crate and locked versions", async () => {
  const lock = readFileSync(join(root, "Cargo.lock"), "utf8");
  for (const line of rs.toml[0].text.split("\n").filter((l) => /^[a-z]/.test(l) && !l.startsWith("["))) {
    const [, name, spec] = /^([a-z0-9_-]+) = (.*?)(?:\s+#.*)?$/.exec(line) ?? [];
    const path = /path = "([^"]+)"/.exec(spec)?.[1];
    const version = /^"([^"]+)"$/.exec(spec)?.[1] ?? /version = "([^"]+)"/.exec(spec)?.[1];
    if (path) {
      const manifest = readFileSync(join(root, path, "Cargo.toml"), "utf8");
      if (!manifest.includes(`name = "${name}"`)) throw new Error(`${line}: ${path}/Cargo.toml is not ${name}`);
    } else if (!version || !new RegExp(`name = "${name}"\\nversion = "${version.replaceAll(".", "\\.")}[.\\d]*"`).test(lock)) {
      throw new Error(`${line}: no ${name} ${version} in Cargo.lock`);
    }
  }
});

await check("clients/rust/README.md: cargo run --example minimal prints seqs 1..5 against the demo (then Ctrl-C)", async () => {
  const p = run(`cargo run --release -q -p tether-client --example minimal -- ${url}`, { cwd: root });
  await p.waitFor(/^5 Text\("tick 5"\)$/m, "five ticks", 900_000);
  await p.interrupt();
  // Every line a seq, consecutive; the first five are ticks 1..5 (more may come before the Ctrl-C).
  consecutive(p.out, /^(\d+) /gm, "example minimal");
  const first = [...p.out.matchAll(/^(\d+) Text\("tick (\d+)"\)$/gm)].slice(0, 5).map((m) => `${m[1]}=${m[2]}`);
  if (first.join(",") !== "1=1,2=2,3=3,4=4,5=5") throw new Error(`printed:\n${p.out}`);
});

await check("clients/rust/README.md: cargo run --example orders prints acked three times against the demo", async () => {
  const p = run(`cargo run --release -q -p tether-client --example orders -- ${url}`, { cwd: root });
  if ((await p.done(900_000)).code !== 0) throw new Error(`exit ${JSON.stringify(p.exited)}:\n${p.out}`);
  if (p.out !== "acked\nacked\nacked\n") throw new Error(`printed:\n${p.out}`);
});

await demo?.interrupt();
await finish("client-readmes", cleanup);
