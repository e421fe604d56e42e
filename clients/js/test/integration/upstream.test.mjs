import { test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { prng } from "../helpers/browser.mjs";
import { memoryStorage, stack } from "../helpers/harness.mjs";
import { outcomes } from "../helpers/script-ws.mjs";
import { nextEvent, range, stateIs, until } from "../helpers/wait.mjs";

const SEED = Number(process.env.TETHER_TEST_SEED ?? 20261207);
const T = { timeout: 60_000 };

// Every 7th message is binary, so both stamp forms cross tether.
const payload = (i) => (i % 7 === 0 ? new TextEncoder().encode(`b${i}`) : `u${i}`);
// What the backend records: text as a string, binary as a Buffer.
const asReceived = (i) => (i % 7 === 0 ? Buffer.from(`b${i}`) : `u${i}`);

test("2,000 stamped messages through 10 random cuts: the backend gets each payload once, in order; every send() resolves", { timeout: 120_000 }, async (t) => {
  const N = 2000;
  const CUTS = 10;
  const WINDOW = 100; // messages in flight: a cut always finds some unacked
  const s = await stack(t);
  const r = s.client({ upstream: true });
  await r.welcome();
  await s.backend.connection(1);
  const rand = prng(SEED);
  const cutAt = new Set();
  while (cutAt.size < CUTS) cutAt.add(WINDOW + Math.floor(rand() * (N - 2 * WINDOW)));
  let cuts = 0;
  const promises = [];
  for (let i = 1; i <= N; i++) {
    if (cutAt.has(i)) {
      await stateIs(r.client, "open");
      // Every other cut resets tether's side too: the bytes in flight toward it are lost.
      cuts += s.proxy.cut({ both: cuts % 2 === 0 });
      // Until the client has seen the drop, it still says "open".
      await stateIs(r.client, "reconnecting");
    }
    if (i > WINDOW) await promises[i - WINDOW - 1];
    promises.push(r.client.send(payload(i)));
  }
  assert.deepEqual(new Set(await outcomes(promises)), new Set(["ok"]));
  // One more message: tether writes in order, so once it is acked and
  // received, any duplicate of an earlier one would be in front of it.
  await r.client.send("fin");
  await s.backend.gotMessages(N + 1);

  const st = r.client.upstreamStats;
  const dup = await s.tether.metric("tether_upstream_frames_total", { result: "duplicate" });
  console.log(`upstream figures: seed=${SEED} messages=${N} cuts=${cuts} connections=${r.client.stats.connections} ` +
    `resends=${st.resends} duplicates-dropped-by-tether=${dup} proxy-connections=${s.proxy.stats.accepted}`);
  assert.deepEqual(s.backend.received, [...range(1, N).map(asReceived), "fin"]);
  assert.equal(cuts, CUTS);
  assert.equal(r.client.stats.connections, CUTS + 1);
  assert.deepEqual(st, { unackedMessages: 0, unackedBytes: 0, waiting: 0, ackedSeq: N + 1, acked: N + 1, resends: st.resends, inDoubt: 0, failed: 0 });
  assert.equal(await s.tether.metric("tether_upstream_frames_total", { result: "forwarded" }), N + 1);
  assert.equal(await s.tether.metric("tether_upstream_frames_total", { result: "seq_gap" }), 0);
  assert.equal(await s.tether.metric("tether_upstream_frames_total", { result: "unstamped" }), 0);
  // One backend connection, which never saw tether's query parameters or a stamp.
  assert.equal(s.backend.conns.length, 1);
  assert.equal(s.backend.conns[0].path, "/feed");
  assert.deepEqual(r.errors, []);
});

test("the backend ends the session: acked sends resolve, the others (sent, waiting, later) reject with ended", T, async (t) => {
  const s = await stack(t);
  const r = s.client({ upstream: true, maxUnackedMessages: 2 });
  await r.welcome();
  const conn = await s.backend.connection(1);
  assert.deepEqual(await outcomes(["a", "b", "c"].map((d) => r.client.send(d))), ["ok", "ok", "ok"]);

  // The client does not hear of the end until the proxy lets it through.
  s.proxy.stall();
  const closed = once(conn, "close");
  s.backend.end(1000, "bye");
  await closed;
  await until(async () => (await s.tether.metric("tether_sessions", { state: "ended" })) === 1, "the session to end");
  const ended = nextEvent(r.client, "end");
  const pending = ["d", "e", "f"].map((d) => r.client.send(d));
  assert.deepEqual(r.client.upstreamStats, { unackedMessages: 2, unackedBytes: 2, waiting: 1, ackedSeq: 3, acked: 3, resends: 0, inDoubt: 0, failed: 0 });
  s.proxy.unstall();
  assert.deepEqual(await ended, [1000, "bye"]);

  const settled = await Promise.allSettled(pending);
  assert.deepEqual(settled.map((x) => [x.reason.name, x.reason.reason, x.reason.seq, x.reason.data]),
    [["TetherUpstreamError", "ended", 4, "d"], ["TetherUpstreamError", "ended", 5, "e"], ["TetherUpstreamError", "ended", 0, "f"]]);
  assert.deepEqual(await outcomes([r.client.send("late")]), ["ended"]);
  assert.equal(r.client.state, "ended");
  assert.deepEqual(s.backend.received, ["a", "b", "c"]);
  assert.deepEqual(r.errors, []);
});

test("tether drains (SIGTERM) and comes back: nothing in doubt, each message written once over the two backend connections", T, async (t) => {
  const N = 300;
  const s = await stack(t);
  const r = s.client({ upstream: true });
  const inDoubt = [];
  r.client.on("in_doubt", (x) => inDoubt.push(x));
  await r.welcome();
  await s.backend.connection(1);
  const first = range(1, N / 2).map((i) => r.client.send(payload(i)));
  await first[9]; // some are written, the rest in flight
  const back = r.welcome((w) => w.outcome === "restarted");
  await s.tether.restart();
  const w = await back;
  assert.equal(w.up.exact, true);
  const rest = range(N / 2 + 1, N).map((i) => r.client.send(payload(i)));
  assert.deepEqual(new Set(await outcomes([...first, ...rest])), new Set(["ok"]));
  await s.backend.gotMessages(N);

  assert.equal(s.backend.conns.length, 2);
  assert.deepEqual([...s.backend.conns[0].received, ...s.backend.conns[1].received], range(1, N).map(asReceived));
  assert.deepEqual(inDoubt, []);
  assert.equal(r.client.upstreamStats.ackedSeq, N);
  assert.deepEqual(r.errors, []);
});

test("tether killed (-9) with messages on their way to the backend: those are in doubt, reported and rejected; the rest goes on", T, async (t) => {
  const N = 2000;
  const FILL = "x".repeat(16 * 1024); // 32 MiB in all: more than the sockets toward the backend hold
  const s = await stack(t);
  const r = s.client({ upstream: true, maxUnackedMessages: 5000, maxUnackedBytes: 64 << 20 });
  const reports = [];
  r.client.on("in_doubt", (x) => reports.push(x));
  await r.welcome();
  const conn1 = await s.backend.connection(1);
  await r.client.send("m1|"); // written and acked: the journal has a mark from the running tether
  conn1._socket.pause(); // the backend stops reading: tether's writes back up
  const sends = range(2, N + 1).map((i) => r.client.send(`m${i}|${FILL}`));
  // A few are written (no ack needed: tether marks every 64 messages or when its queue is empty).
  await until(async () => (await s.tether.metric("tether_upstream_frames_total", { result: "forwarded" })) >= 4, "writes to the backend");

  // Cut the client off first, so that no ack reaches it after the snapshot.
  s.proxy.block();
  const away = stateIs(r.client, "reconnecting");
  s.proxy.cut();
  await away;
  const ackedBefore = r.client.upstreamStats.ackedSeq;
  await s.tether.stop("SIGKILL");
  await s.tether.start();
  const back = r.welcome((w) => w.outcome === "restarted");
  s.proxy.unblock();
  const w = await back;

  assert.equal(w.up.exact, false);
  assert.ok(w.up.acked >= ackedBefore && w.up.next === w.up.acked + 1, JSON.stringify(w.up));
  assert.ok(w.up.next <= N + 1, `nothing left in doubt (next ${w.up.next}): the backend's sockets took it all`);
  const doubtful = range(w.up.next, N + 1);
  assert.deepEqual(reports.map((x) => [x.policy, x.cause, x.messages.map((m) => m.seq)]), [["report", "crash", doubtful]]);
  assert.deepEqual(reports[0].messages.map((m) => m.data.slice(0, m.data.indexOf("|"))), doubtful.map((i) => `m${i}`));
  const results = await outcomes(sends);
  assert.deepEqual(results, range(2, N + 1).map((i) => (i < w.up.next ? "ok" : "in_doubt")));

  // What the old backend connection got: a prefix of what was sent, with
  // everything acked and maybe some of what was in doubt, never more.
  const closed1 = once(conn1, "close");
  conn1._socket.resume();
  await closed1;
  const got1 = conn1.received.map((m) => m.slice(0, m.indexOf("|")));
  assert.deepEqual(got1, range(1, got1.length).map((i) => `m${i}`));
  assert.ok(got1.length >= w.up.acked && got1.length <= N + 1, `${got1.length} received, ${w.up.acked} acked`);

  // The session goes on, with seqs from next.
  const conn2 = await s.backend.connection(2);
  await r.client.send("after");
  assert.equal(r.client.upstreamStats.ackedSeq, w.up.next);
  await s.backend.gotMessages(got1.length + 1);
  assert.deepEqual(conn2.received, ["after"]);
  assert.equal(r.client.upstreamStats.inDoubt, doubtful.length);
  console.log(`kill -9 figures: sent=${N + 1} acked-before-kill=${w.up.acked} in-doubt=${doubtful.length} old-backend-received=${got1.length}`);
  assert.deepEqual(r.errors, []);
});

test("storage: a reloaded client resumes the session and continues at welcome.up.next; unacked messages stayed in the old one's memory", T, async (t) => {
  const s = await stack(t);
  const storage = memoryStorage();
  const a = s.client({ upstream: true, storage });
  await a.welcome();
  await s.backend.connection(1);
  assert.deepEqual(await outcomes(["a", "b", "c"].map((d) => a.client.send(d))), ["ok", "ok", "ok"]);
  s.proxy.block();
  const away = stateIs(a.client, "reconnecting");
  s.proxy.cut();
  await away;
  const lost = a.client.send("never"); // held in memory, not sent: there is no connection
  // A reload: the page's memory is gone, its sessionStorage is not.
  const saved = new Map(storage.map);
  a.client.close();
  assert.deepEqual(await outcomes([lost]), ["closed"]);
  for (const [k, v] of saved) storage.setItem(k, v);

  s.proxy.unblock();
  const b = s.client({ upstream: true, storage });
  const w = await b.welcome();
  assert.equal(w.outcome, "resumed");
  assert.deepEqual({ next: w.up.next, acked: w.up.acked }, { next: 4, acked: 3 });
  await b.client.send("d");
  assert.equal(b.client.upstreamStats.ackedSeq, 4);
  await s.backend.gotMessages(4);
  assert.deepEqual(s.backend.received, ["a", "b", "c", "d"]);
  assert.equal(s.backend.conns.length, 1);
  assert.deepEqual([...a.errors, ...b.errors], []);
});

test("stamp mode json: upstream stamps are still the prefix form; the backend gets the payloads unchanged", T, async (t) => {
  const s = await stack(t, { tether: { stamp: "json" } });
  const r = s.client({ upstream: true, stampMode: "json" });
  await r.welcome();
  await s.backend.connection(1);
  const sent = ['{"a":1}', "7:x", "#not-control", ""];
  assert.deepEqual(await outcomes([...sent, new Uint8Array([0, 1])].map((d) => r.client.send(d))), ["ok", "ok", "ok", "ok", "ok"]);
  await s.backend.gotMessages(5);
  assert.deepEqual(s.backend.received, [...sent, Buffer.from([0, 1])]);
  s.backend.send(1);
  await r.delivered(1);
  assert.deepEqual(r.data, ["m1"]);
  assert.deepEqual(r.errors, []);
});
