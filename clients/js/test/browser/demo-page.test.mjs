// `tether demo`'s page, from a real `tether demo` process: break the
// connection with the page's button, and check what the page shows after.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launch } from "../helpers/browser.mjs";
import { freePort } from "../helpers/proxy.mjs";
import { TETHER_BIN } from "../helpers/tether.mjs";
import { range } from "../helpers/wait.mjs";

const T = { timeout: 120_000 };
const WAIT = { timeout: 30_000 };
const artifacts = mkdtempSync(join(tmpdir(), "tether-js-demo-page-"));
let browser, demo;

/** Starts `tether demo` on free ports; resolves with the page's URL from its output. */
async function startDemo() {
  const dir = mkdtempSync(join(tmpdir(), "tether-demo-"));
  const [data, admin, page] = [await freePort(), await freePort(), await freePort()];
  const proc = spawn(TETHER_BIN, ["demo", "--listen", `127.0.0.1:${data}`, "--admin-listen", `127.0.0.1:${admin}`,
    "--data-dir", join(dir, "journal"), "--demo-page-listen", `127.0.0.1:${page}`], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const url = await new Promise((resolve, reject) => {
    proc.stdout.on("data", (d) => {
      out += d;
      const m = /^page: +(http:\/\/\S+)/m.exec(out);
      if (m) resolve(m[1]);
    });
    proc.stderr.on("data", (d) => { out += d; });
    proc.once("exit", (code) => reject(new Error(`tether demo exited (${code}):\n${out}`)));
  });
  return {
    url,
    output: () => out,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

before(async () => {
  browser = await launch();
  demo = await startDemo();
});
after(async () => {
  await browser?.close();
  await demo?.stop();
});

test("the demo page: a break, then the seqs continue with no gap and no duplicate, replayed", T, async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(demo.url);
  assert.equal(page.url(), demo.url);
  await page.waitForFunction(() => window.demo?.client.state === "open" && window.demo.seen.seqs.length >= 3, WAIT);

  const atBreak = await page.evaluate(() => window.demo.client.offset);
  await page.click("#break");
  // The page sees the drop, fails to reconnect for ~3 s, then resumes.
  await page.waitForFunction(() => window.demo.seen.breaks === 1 && window.demo.client.state !== "open", WAIT);
  await page.waitForFunction(() => window.demo.client.stats.connections === 2 && window.demo.client.state === "open", WAIT);
  // Replayed frames first, then at least two live ones.
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll("#rows tr");
    return window.demo.seen.replayed > 0 && rows[0]?.className === "live" && rows[1]?.className === "live";
  }, WAIT);

  // One snapshot: a tick arrives every 500 ms.
  const { seen, shown } = await page.evaluate(async () => {
    await new Promise((r) => setTimeout(r)); // after the render that follows each commit
    const t = (id) => document.getElementById(id).textContent;
    return {
      seen: { ...window.demo.seen, seqs: [...window.demo.seen.seqs], stats: { ...window.demo.client.stats } },
      shown: {
        state: t("state"), outcome: t("outcome"), order: t("order"), gaps: t("gaps"),
        delivered: Number(t("delivered")), replayed: Number(t("replayed")), live: Number(t("live")),
        duplicates: Number(t("duplicates")), breaks: Number(t("breaks")),
        rows: [...document.querySelectorAll("#rows tr")].map((tr) => [...tr.children].map((td) => td.textContent)),
      },
    };
  });
  const shot = join(artifacts, "demo-page.png");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`demo page figures: break-at-offset=${atBreak} delivered=${shown.delivered} replayed=${shown.replayed} ` +
    `live=${shown.live} duplicates-dropped=${shown.duplicates} connections=${seen.stats.connections} ` +
    `outcome="${shown.outcome}" screenshot=${shot}`);

  assert.deepEqual(seen.seqs, range(1, seen.seqs.length), "every seq once, in order");
  assert.equal(shown.state, "open");
  assert.match(shown.outcome, /^resumed \(replay \d+\.\.\d+\)$/);
  assert.equal(shown.order, "in order, no gap, no duplicate");
  assert.equal(shown.gaps, "none");
  assert.equal(shown.breaks, 1);
  assert.equal(shown.delivered, seen.seqs.length);
  assert.equal(shown.replayed + shown.live, shown.delivered);
  assert.ok(shown.replayed >= 1, "the ticks sent during the outage are replayed");
  // The table shows the newest first: seqs descending by one, each with its tick.
  for (let i = 0; i < shown.rows.length; i++) {
    const [seq, payload, how] = shown.rows[i];
    assert.equal(Number(seq), seen.seqs.at(-1) - i);
    assert.match(payload, /^tick \d+$/);
    assert.ok(how === "live" || how === "replayed");
  }
  assert.deepEqual(errors, []);
  await page.close();
});
