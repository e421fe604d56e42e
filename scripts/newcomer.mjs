// The newcomer's path, scripted (scripts/newcomer runs it): every code block
// of README.md's "Try it" and "Client example" sections, and the commands
// its text gives for the examples, run as written against a real
// `tether demo`. The only change made to them: the demo's ports
// (8080/9090/8081) become free ones, so that a busy machine does not fail
// the run. A block this script does not know fails it, so a new example
// cannot go untested.
//
// Env: TETHER_BIN (the built tether; `bash scripts/demo` must find it
// fresh), CARGO_TARGET_DIR. Prints one line per check and ends with
// `newcomer: N passed, N failed`.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "../clients/js/test/helpers/browser.mjs";
import { freePort } from "../clients/js/test/helpers/proxy.mjs";
import { blocks, check, consecutive, finish, run as spawnIn } from "./readme-kit.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const readme = readFileSync(join(root, "README.md"), "utf8");
const scratch = mkdtempSync(join(tmpdir(), "tether-newcomer-"));
const run = (command, { cwd = root, env } = {}) => spawnIn(command, { cwd, env });

/** Inline `code` of the README that starts with `prefix`; exactly one must exist. */
function inline(prefix) {
  const found = [...new Set([...readme.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]).filter((c) => c.startsWith(prefix)))];
  if (found.length !== 1) throw new Error(`README: expected one command starting with "${prefix}", found ${JSON.stringify(found)}`);
  return found[0];
}

const [data, admin, pagePort] = [await freePort(), await freePort(), await freePort()];
const ports = (s) => s.replaceAll("127.0.0.1:8080", `127.0.0.1:${data}`)
  .replaceAll("127.0.0.1:9090", `127.0.0.1:${admin}`).replaceAll("127.0.0.1:8081", `127.0.0.1:${pagePort}`);
const demoEnv = { XDG_STATE_HOME: join(scratch, "state") };
const journal = join(scratch, "state", "tether-demo");

const all = blocks(readme, ["Try it", "Client example"]);
const by = {
  demo: all.filter((b) => b.lang === "sh" && b.text === "bash scripts/demo\n"),
  test: all.filter((b) => b.lang === "sh" && b.text === "bash scripts/test\n"),
  install: all.filter((b) => b.lang === "sh" && b.text.startsWith("(cd clients/js && npm ci")),
  curl: all.filter((b) => b.lang === "sh" && b.text.startsWith("curl ")),
  jsNode: all.filter((b) => b.lang === "js" && b.text.includes('from "@tether/client"')),
  jsRaw: all.filter((b) => b.lang === "js" && b.text.includes("function connect()")),
  rust: all.filter((b) => b.lang === "rust"),
  // An HTTP request, shown; the curl block sends it.
  http: all.filter((b) => b.lang === "http"),
};
const known = new Set(Object.values(by).flat());
let demo;

await check("README: every block of Try it / Client example is one this script runs", async () => {
  const unknown = all.filter((b) => !known.has(b));
  if (unknown.length) throw new Error(`not run by scripts/newcomer: ${unknown.map((b) => `line ${b.line} (${b.lang})`).join(", ")}`);
  for (const [k, v] of Object.entries(by)) if (v.length !== 1) throw new Error(`expected one ${k} block, found ${v.length}`);
  // scripts/test is what runs this script: running it here would recurse.
});

// 1. `bash scripts/demo`: with the build cache CI already filled, cargo finds
// the binary fresh; the narration must reach its end.
const demoCmd = `${by.demo[0].text.trim()} --listen 127.0.0.1:${data} --admin-listen 127.0.0.1:${admin} --demo-page-listen 127.0.0.1:${pagePort}`;
await check("bash scripts/demo: the scripted client's check passes", async () => {
  demo = run(demoCmd, { env: demoEnv });
  await demo.waitFor(new RegExp(`journal: ${journal} \\(new;`), "a new journal in $XDG_STATE_HOME/tether-demo", 600_000);
  await demo.waitFor(/Every seq from 1 to \d+ arrived exactly once, in order/, "the scripted check");
  await demo.waitFor(/Ctrl-C to stop/, "the end of the narration");
  // The token's varying part, not the 16 characters every session shares.
  const tags = [...demo.out.matchAll(/"session":"…([A-Za-z0-9_-]{12})…"/g)].map((m) => m[1]);
  if (tags.length !== 2 || tags[0] !== tags[1]) throw new Error(`expected the same token tag twice: ${tags}`);
});

await check("Client example, JavaScript: the install block", async () => {
  // TMPDIR: the block's `mktemp -d` (the app's directory) lands in the scratch dir, removed at the end.
  const p = run(`set -euo pipefail\n${ports(by.install[0].text)}pwd > ${join(scratch, "appdir")}\n`, { env: { TMPDIR: scratch } });
  if ((await p.done(300_000)).code !== 0) throw new Error(`exit ${JSON.stringify(p.exited)}:\n${p.out}`);
});
const app = existsSync(join(scratch, "appdir")) ? readFileSync(join(scratch, "appdir"), "utf8").trim() : null;

await check("Client example, JavaScript: follow.mjs in Node against the demo", async () => {
  if (!app) throw new Error("no app directory: the install block failed");
  writeFileSync(join(app, "follow.mjs"), ports(by.jsNode[0].text));
  const p = run("node follow.mjs", { cwd: app });
  await p.waitFor(/^3 tick 3 $/m, "three ticks");
  await p.interrupt();
  const seqs = consecutive(p.out, /^(\d+) tick \d+ $/gm, "node follow.mjs");
  if (seqs[0] !== 1) throw new Error(`first seq ${seqs[0]}:\n${p.out}`);
});

await check("Client example, raw protocol: the block in headless Chromium", async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const lines = [];
    page.on("console", (m) => lines.push(m.text()));
    page.on("pageerror", (e) => lines.push(`pageerror: ${e}`));
    // A loopback origin: Chromium keeps other pages (about:blank too) off
    // loopback addresses (local network access checks).
    await page.goto(`http://127.0.0.1:${admin}/livez`);
    await page.addScriptTag({ content: ports(by.jsRaw[0].text) });
    await page.waitForFunction("offset >= 3", { timeout: 30_000 }) // the block's own `let offset`
      .catch((e) => { throw new Error(`${e.message}; console:\n${lines.join("\n")}`); });
    const text = lines.join("\n") + "\n";
    const seqs = consecutive(text, /^(\d+) tick \d+$/gm, "raw block");
    if (seqs[0] !== 1 || seqs.length < 3 || /pageerror/.test(text)) throw new Error(text);
  } finally {
    await browser.close();
  }
});

await check("Client example, raw protocol: the curl commands (connect, Ctrl-C, resume with headers)", async () => {
  const cmds = by.curl[0].text.replace(/\\\n/g, " ").trim().split("\n");
  if (cmds.length !== 2) throw new Error(`expected two curl commands: ${cmds}`);
  const first = run(ports(cmds[0]));
  await first.until((out) => out.match(/\d+:tick \d+/g)?.length >= 4, "four ticks");
  await first.interrupt();
  const token = /^tether-session: ([A-Za-z0-9_-]+)/m.exec(first.out)?.[1]; // cat -v shows the CR as ^M
  const seqs = [...first.out.matchAll(/(\d+):tick \d+/g)].map((m) => Number(m[1]));
  const offset = seqs.at(-2); // the last one may be cut short by the Ctrl-C
  if (!token || !/"outcome":"new"/.test(first.out)) throw new Error(first.out);
  const second = run(ports(cmds[1]).replace("<token>", token).replace("Tether-Offset: 42", `Tether-Offset: ${offset}`));
  await second.waitFor(new RegExp(`"outcome":"resumed","replay":\\{"from":${offset + 1},[^]*?\\D${offset + 1}:tick`), "a resume replaying from the offset");
  await second.interrupt();
});

await check("Client example, Rust: the README block is examples/minimal.rs, and it runs", async () => {
  const src = readFileSync(join(root, "clients/rust/examples/minimal.rs"), "utf8");
  if (!src.includes(by.rust[0].text)) throw new Error("README's Rust block differs from clients/rust/examples/minimal.rs");
  const p = run(ports(inline("cargo run --release -p tether-client --example minimal")));
  await p.waitFor(/^3 Text\("tick 3"\)$/m, "three ticks", 300_000);
  await p.interrupt();
  const seqs = consecutive(p.out, /^(\d+) Text\("tick \d+"\)$/gm, "example minimal");
  if (seqs[0] !== 1) throw new Error(p.out);
});

// 2. The two follow examples across a demo restart: the journal is kept, so
// they resume (outcome restarted), each seq once and in order.
await check("follow examples (JS and Rust) resume across a demo restart", async () => {
  const js = run(ports(inline("node clients/js/examples/follow.mjs")));
  const rs = run(ports(inline("cargo run --release -p tether-client --example follow")));
  await js.waitFor(/^ +2 live {3}tick 2$/m, "node follow.mjs: two ticks");
  await rs.waitFor(/^ +2 live {3}tick 2$/m, "cargo example follow: two ticks", 300_000);
  const stopped = await demo.interrupt();
  if (stopped.code !== 0) throw new Error(`the demo exited with ${JSON.stringify(stopped)}:\n${demo.out}`);
  if (!demo.out.includes(`the journal stays in ${journal}`)) throw new Error(demo.out);
  demo = run(demoCmd, { env: demoEnv });
  await demo.waitFor(new RegExp(`journal: ${journal} \\(from an earlier run;`), "the same journal, reused", 600_000);
  await js.waitFor(/^-- connected: restarted, replay /m, "node follow.mjs resumes");
  await rs.waitFor(/^-- connected: Restarted, replay /m, "cargo example follow resumes");
  const [jsSeq, rsSeq] = [js, rs].map((p) => consecutive(p.out, /^ +(\d+) (?:live  |replay) .*$/gm, p.command));
  const after = (since) => (out) => [...out.matchAll(/^ +(\d+) live {3}tick/gm)].some((m) => Number(m[1]) > since);
  await js.until(after(jsSeq.at(-1)), "node follow.mjs: live after the restart");
  await rs.until(after(rsSeq.at(-1)), "cargo example follow: live after the restart");
  const jsExit = await js.interrupt(); // Ctrl-C closes the session (1000) and exits 0
  if (jsExit.code !== 0) throw new Error(`node follow.mjs exited with ${JSON.stringify(jsExit)}`);
  await rs.interrupt();
  for (const p of [js, rs]) consecutive(p.out, /^ +(\d+) (?:live  |replay) .*$/gm, p.command);
  await demo.waitFor(/Every seq from 1 to \d+ arrived exactly once, in order/, "the scripted check after the restart");
});

await demo?.interrupt();
await finish("newcomer", () => rmSync(scratch, { recursive: true, force: true }));
