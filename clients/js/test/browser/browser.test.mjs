import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBackend } from "../helpers/backend.mjs";
import { launch, openPage, prng, servePage } from "../helpers/browser.mjs";
import { startProxy } from "../helpers/proxy.mjs";
import { startTether } from "../helpers/tether.mjs";
import { range, until } from "../helpers/wait.mjs";

const T = { timeout: 120_000 };
const SEED = Number(process.env.TETHER_TEST_SEED ?? 20261129);
const FRAMES = 500;
const CUTS = 24;
const artifacts = mkdtempSync(join(tmpdir(), "tether-js-browser-"));
let browser, http;

before(async () => {
  browser = await launch();
  http = await servePage();
});
after(async () => {
  await browser?.close();
  await http?.close();
});

async function stack(t, { tether = {} } = {}) {
  const backend = await startBackend();
  const th = await startTether({ upstream: backend.url, ...tether });
  const proxy = await startProxy(th.dataPort);
  t.after(async () => {
    await proxy.close();
    await th.cleanup();
    await backend.close();
  });
  return { backend, tether: th, proxy, page: `${http.origin}/?ws=${encodeURIComponent(`ws://127.0.0.1:${proxy.port}/feed`)}` };
}

test(`${CUTS} random cuts and a reload: the handler sees 1..${FRAMES} exactly once, in order`, T, async (t) => {
  const s = await stack(t);
  const rand = prng(SEED);
  // Cut points count frames delivered, so they are random but reproducible.
  const cutAt = new Set();
  // Within the first 90%, so that a cut that has to wait for a connection still finds one.
  while (cutAt.size < CUTS) cutAt.add(5 + Math.floor(rand() * FRAMES * 0.9));
  const reloadAt = Math.floor(FRAMES / 2) + Math.floor(rand() * 20);
  const seqs = [];
  const errors = [];
  let state = "";
  let cutsPending = 0;
  let cuts = 0;
  let reloaded = false;
  let page;
  let done;
  const finished = new Promise((r) => { done = r; });
  const tryCut = () => {
    // Only a cut of a live, welcomed connection counts.
    if (cutsPending > 0 && state === "open" && s.proxy.cut() > 0) {
      cutsPending--;
      cuts++;
    }
  };
  page = await openPage(browser, s.page, {
    onReport(seq) {
      seqs.push(seq);
      if (cutAt.has(seqs.length)) cutsPending++;
      tryCut();
      if (seqs.length === reloadAt && !reloaded) {
        reloaded = true;
        page.evaluate(() => window.requestReload()).catch(() => {});
      }
      if (seqs.length >= FRAMES) done();
    },
    onState(st) { state = st; tryCut(); },
    onError: (e) => errors.push(e),
    onGap: (g) => errors.push(`gap ${JSON.stringify(g)}`),
  });
  await s.backend.connection(1);
  s.backend.tick(FRAMES, 3);
  await finished;
  await until(() => s.backend.sent === FRAMES, "the backend to finish");
  const totals = await page.evaluate(() => window.totals());
  const loads = await page.evaluate(() => Number(sessionStorage.getItem("loads")));
  await page.screenshot({ path: join(artifacts, "cuts.png") });

  const delivered = seqs.length;
  const dupDelivered = delivered - new Set(seqs).size;
  console.log(`browser figures: seed=${SEED} cuts=${cuts} reloads=${loads - 1} frames=${FRAMES} ` +
    `received=${totals.received} duplicates-seen-by-library=${totals.duplicates} delivered-to-handler=${delivered} ` +
    `duplicates-delivered=${dupDelivered} connections=${totals.connections} proxy-connections=${s.proxy.stats.accepted} ` +
    `screenshot=${join(artifacts, "cuts.png")}`);
  assert.deepEqual(seqs, range(1, FRAMES));
  assert.deepEqual(errors, []);
  assert.ok(cuts >= 20, `only ${cuts} cuts`);
  assert.equal(loads, 2);
  assert.equal(s.backend.conns.length, 1); // the backend never saw a drop
  await page.close();
});

/** `when(cond)` resolves once `cond()` holds; `check()` re-evaluates after each report from the page. */
function conditions() {
  const waits = [];
  const check = () => { for (const w of [...waits]) if (w.cond()) { waits.splice(waits.indexOf(w), 1); w.r(); } };
  const when = (cond) => new Promise((r) => { waits.push({ cond, r }); check(); });
  return { when, check };
}

test("retention exceeded while the page is away: exactly one onGap, then the retained frames", T, async (t) => {
  const s = await stack(t, { tether: { maxSessionFrames: 10 } });
  const seqs = [];
  const gaps = [];
  const errors = [];
  let state = "";
  const { when, check } = conditions();
  const page = await openPage(browser, s.page, {
    onReport(seq, data) { seqs.push([seq, data]); check(); },
    onState(st) { state = st; check(); },
    onGap(g) { gaps.push(g); check(); },
    onError: (e) => errors.push(e),
  });
  await s.backend.connection(1);
  s.backend.send(3);
  await when(() => seqs.length === 3);
  s.proxy.block();
  s.proxy.cut();
  await when(() => state === "reconnecting");
  // Seqs 4..200; tether trims whole 64-frame segments once the session holds
  // 10 + 64 frames (1..64 at seq 75, 65..128 at seq 139): 129..200 are kept.
  s.backend.send(197);
  await until(async () => (await s.tether.metric("tether_trimmed_frames_total", { reason: "max_frames" })) === 128, "128 frames trimmed");
  s.proxy.unblock();
  await when(() => seqs.length === 75);
  await page.screenshot({ path: join(artifacts, "gap.png") });
  console.log(`browser gap figures: frames=200 retained=72 delivered=${seqs.length} gaps=${gaps.length} screenshot=${join(artifacts, "gap.png")}`);

  assert.deepEqual(seqs, [1, 2, 3, ...range(129, 200)].map((i) => [i, `m${i}`]));
  assert.deepEqual(gaps, [{ reason: "trimmed", requestedOffset: 3, firstAvailable: 129, lost: { from: 4, to: 128 }, midStream: false, newSession: false }]);
  assert.deepEqual(errors, []);
  await page.close();
});

test("online and visibilitychange retry at once instead of waiting out the backoff", T, async (t) => {
  const s = await stack(t);
  let state = "";
  const errors = [];
  const { when, check } = conditions();
  const page = await openPage(browser, `${s.page}&slow=1`, {
    onReport() {},
    onState(st) { state = st; check(); },
    onError: (e) => errors.push(e),
  });
  await when(() => state === "open");
  for (const event of ["online", "visibilitychange"]) {
    s.proxy.cut();
    await when(() => state === "reconnecting"); // the next attempt is ~10 minutes away
    const accepted = s.proxy.stats.accepted;
    await page.evaluate((ev) => {
      if (ev === "online") window.dispatchEvent(new Event("online"));
      else document.dispatchEvent(new Event("visibilitychange")); // the page is visible
    }, event);
    await when(() => state === "open");
    assert.equal(s.proxy.stats.accepted, accepted + 1, event);
  }
  assert.deepEqual(errors, []);
  await page.close();
});

test("failed attempts while the browser is offline do not give the session up", T, async (t) => {
  const s = await stack(t);
  let state = "";
  let attempts = 0;
  const events = [];
  const errors = [];
  const { when, check } = conditions();
  const page = await openPage(browser, `${s.page}&maxFailedResumes=2`, {
    onReport() {},
    onState(st) { state = st; if (st === "connecting") attempts++; check(); },
    onEvent(type, data) { events.push([type, data]); check(); },
    onError: (e) => errors.push(e),
  });
  await when(() => state === "open");
  s.proxy.block();
  await page.setOfflineMode(true); // navigator.onLine is now false
  s.proxy.cut();
  const before = attempts;
  await when(() => attempts >= before + 6); // three times maxFailedResumes
  s.proxy.unblock();
  await page.setOfflineMode(false); // fires "online": an immediate retry
  await when(() => events.length === 2);

  assert.deepEqual(events, [["welcome", "new"], ["welcome", "resumed"]]);
  assert.deepEqual(errors, []);
  await page.close();
});

test("upstream in Chromium: 4 batches of 250 sends, each lost in flight by a cut and resent; the backend gets each message once, in order", T, async (t) => {
  const s = await stack(t);
  const BATCH = 250;
  const BATCHES = 4;
  let state = "";
  let acked = 0;
  let sent = 0;
  const errors = [];
  const { when, check } = conditions();
  const page = await openPage(browser, `${s.page}&upstream=1`, {
    onReport() {},
    onState(st) { state = st; check(); },
    onEvent(type, n) {
      if (type === "acked") acked++;
      if (type === "sent") sent = n;
      check();
    },
    onError: (e) => errors.push(e),
  });
  await when(() => state === "open");
  await s.backend.connection(1);
  let cuts = 0;
  for (let b = 0; b < BATCHES; b++) {
    const from = b * BATCH + 1;
    const to = from + BATCH - 1;
    await when(() => state === "open");
    // The batch goes out on the socket but stops in the proxy; the cut loses it.
    s.proxy.stallToTether();
    const done = page.evaluate((f, t) => window.sendBatch(f, t), from, to);
    await when(() => sent === to);
    assert.equal(acked, from - 1);
    cuts += s.proxy.cut({ both: true });
    await when(() => state !== "open");
    assert.deepEqual(await done, Array(BATCH).fill("ok"));
  }
  const total = BATCH * BATCHES;
  await s.backend.gotMessages(total);
  const st = await page.evaluate(() => window.upStats());
  await page.screenshot({ path: join(artifacts, "upstream.png") });
  console.log(`browser upstream figures: messages=${total} cuts=${cuts} resends=${st.resends} ` +
    `connections=${s.proxy.stats.accepted} screenshot=${join(artifacts, "upstream.png")}`);

  assert.deepEqual(s.backend.received, range(1, total).map((i) => (i % 5 === 0 ? Buffer.from(`b${i}`) : `u${i}`)));
  assert.equal(cuts, BATCHES);
  // Every message was sent twice: once into the cut, once after the resume.
  assert.deepEqual(st, { unackedMessages: 0, unackedBytes: 0, waiting: 0, ackedSeq: total, acked: total, resends: total, inDoubt: 0, failed: 0 });
  assert.equal(s.backend.conns.length, 1);
  assert.equal(s.backend.conns[0].path, "/feed");
  assert.deepEqual(errors, []);
  await page.close();
});

test("the token never travels in a URL: resumes carry it in Sec-WebSocket-Protocol, the one from the last welcome, and the backend never sees it", T, async (t) => {
  const s = await stack(t);
  let state = "";
  const events = [];
  const errors = [];
  const { when, check } = conditions();
  const page = await openPage(browser, s.page, {
    onReport() {},
    onState(st) { state = st; check(); },
    onEvent(type, data) { events.push([type, data]); check(); },
    onError: (e) => errors.push(e),
  });
  for (let n = 1; n <= 3; n++) {
    await when(() => events.length === n && state === "open");
    if (n < 3) s.proxy.cut();
  }
  const heads = s.proxy.heads.map(({ request, response }) => ({
    line: request.split("\r\n")[0],
    offered: /^sec-websocket-protocol: (.*)$/im.exec(request)?.[1].trim() ?? null,
    selected: /^sec-websocket-protocol: (.*)$/im.exec(response)?.[1].trim() ?? null,
    token: /^tether-session: (.*)$/im.exec(response)?.[1].trim() ?? null,
  }));
  console.log(`browser token figures: connections=${heads.length} request-lines=${JSON.stringify(heads.map((h) => h.line))}`);
  assert.equal(heads.length, 3);
  assert.deepEqual(events, [["welcome", "new"], ["welcome", "resumed"], ["welcome", "resumed"]]);
  const tokens = heads.map((h) => h.token);
  assert.equal(new Set(tokens).size, 3, "a new token on every connection");
  // A new session offers nothing; each resume offers the token of the
  // previous connection's 101 (= its welcome) and gets the marker back.
  assert.deepEqual(heads.map((h) => [h.line, h.offered, h.selected]), [
    ["GET /feed HTTP/1.1", null, null],
    ["GET /feed?tether_offset=0 HTTP/1.1", `tether.v1, tether.session.${tokens[0]}`, "tether.v1"],
    ["GET /feed?tether_offset=0 HTTP/1.1", `tether.v1, tether.session.${tokens[1]}`, "tether.v1"],
  ]);
  for (const { request } of s.proxy.heads) {
    assert.ok(!/tether_session/.test(request.split("\r\n")[0]));
  }
  // The session kept its one backend connection, which saw none of it.
  assert.equal(s.backend.conns.length, 1);
  assert.equal(s.backend.conns[0].path, "/feed");
  assert.equal(s.backend.conns[0].headers["sec-websocket-protocol"], undefined);
  assert.deepEqual(errors, []);
  await page.close();
});
