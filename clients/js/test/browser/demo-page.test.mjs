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
        broken: t("broken"),
        session: t("session"),
        events: [...document.querySelectorAll("#events div")].map((d) => d.textContent.slice(14)),
        chart: window.demo.draw() ?? {
          live: document.querySelectorAll("#chart circle.live").length,
          replay: document.querySelectorAll("#chart rect.replay").length,
          breaks: document.querySelectorAll("#chart line.break").length,
        },
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
  // The drop and every failed attempt are one line, and the note about the
  // break is gone once the page is back.
  const lost = shown.events.filter((e) => e.startsWith("connection lost"));
  assert.equal(lost.length, 1, shown.events.join("\n"));
  const attempts = Number(/^connection lost; back after \d+\.\d s and (\d+) attempts?$/.exec(lost[0])?.[1]);
  assert.ok(attempts >= 2, `a resume refused during the outage, then one that worked: ${lost[0]}`);
  assert.deepEqual(shown.events.filter((e) => e.startsWith("state:")), []);
  assert.equal(shown.broken, "");
  // The chart: one mark per delivered message (all within its minute), the break.
  assert.deepEqual(shown.chart, { live: seen.live, replay: seen.replayed, breaks: 1 });
  // The part of the token that differs between sessions: not the scripted
  // client's (another session of the same journal), which the demo printed.
  const printed = /"session":"…([A-Za-z0-9_-]{12})…"/.exec(demo.output())?.[1];
  assert.match(shown.session, /^…[A-Za-z0-9_-]{12}…$/);
  assert.ok(printed && !shown.session.includes(printed), `${shown.session} vs the demo's ${printed}`);
  assert.deepEqual(errors, []);
  await page.close();
});

/** WCAG 2 contrast ratio of two CSS colours `rgb(r, g, b)`. */
function contrast(a, b) {
  const lum = (c) => {
    const [r, g, bl] = c.match(/\d+/g).slice(0, 3).map((v) => {
      const x = Number(v) / 255;
      return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * bl;
  };
  const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

test("the demo page: replayed and live rows differ, every text reads at 4.5:1 or more, a gap is drawn", T, async () => {
  const page = await browser.newPage();
  await page.goto(demo.url);
  await page.waitForFunction(() => document.querySelector("#rows tr.live"), WAIT);
  // A replayed row, styled by the page's own rules, next to a live one.
  const styles = await page.evaluate(() => {
    const rows = document.getElementById("rows");
    const replay = rows.firstElementChild.cloneNode(true);
    replay.className = "replay";
    rows.prepend(replay);
    const of = (tr) => [...tr.children].map((td) => {
      const cs = getComputedStyle(td);
      return { color: cs.color, background: cs.backgroundColor, marker: cs.boxShadow };
    });
    return { replay: of(replay), live: of(rows.children[1]) };
  });
  for (const kind of ["replay", "live"]) {
    for (const cell of styles[kind]) {
      assert.ok(contrast(cell.color, cell.background) >= 4.5, `${kind}: ${cell.color} on ${cell.background}`);
    }
  }
  assert.notEqual(styles.replay[0].background, styles.live[0].background);
  assert.notEqual(styles.replay[0].marker, styles.live[0].marker);
  assert.notEqual(styles.replay.at(-1).color, styles.live.at(-1).color);

  // A gap on the chart: a band over the seqs lost, labelled. (The demo's
  // retention, trimmed in 64-frame segments, makes a real one take minutes;
  // test/browser/browser.test.mjs covers the library's onGap.)
  const gap = await page.evaluate(() => {
    window.demo.seen.marks.push({ t: Date.now(), kind: "gap", from: 3, to: 5 });
    window.demo.draw();
    return {
      bands: document.querySelectorAll("#chart rect.gapband").length,
      label: document.querySelector("#chart text.gap")?.textContent,
    };
  });
  assert.deepEqual(gap, { bands: 1, label: "gap: 3..5 lost" });
  await page.close();
});
