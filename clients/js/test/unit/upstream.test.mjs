import { test } from "node:test";
import assert from "node:assert/strict";
import { stampUpstream, TetherClient, TetherUpstreamError } from "../../dist/index.js";
import { scriptedSockets, settle, track } from "../helpers/script-ws.mjs";

// docs/PROTOCOL.md §12: the upstream stamp is the downstream prefix form.
test("stamps: text is <seq>:<payload>, binary is 8 bytes of big-endian seq then the payload", () => {
  assert.equal(stampUpstream(17, "hello"), "17:hello");
  assert.equal(stampUpstream(1, ""), "1:");
  assert.equal(stampUpstream(3, "4:x"), "3:4:x");
  assert.deepEqual([...stampUpstream(258, new Uint8Array([1]))], [0, 0, 0, 0, 0, 0, 1, 2, 1]);
  assert.deepEqual([...stampUpstream(2 ** 32 + 5, new Uint8Array([]))], [0, 0, 0, 1, 0, 0, 0, 5]);
  assert.deepEqual([...stampUpstream(2 ** 53 - 1, new Uint8Array([9]))], [0, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 9]);
  for (const bad of [0, -1, 1.5, 2 ** 53, NaN]) assert.throws(() => stampUpstream(bad, "x"), RangeError, String(bad));
});

const UP = (next, acked, conn = "7", exact = true) => ({ next, acked, conn, exact });

function client(opts = {}) {
  const net = scriptedSockets();
  const errors = [];
  const events = [];
  const c = new TetherClient("ws://t/feed?room=1", {
    WebSocket: net.WebSocket,
    upstream: true,
    backoff: { initialMs: 0, maxMs: 0 },
    wakeOnBrowserEvents: false,
    ...opts,
  });
  c.on("error", (e) => errors.push(e));
  c.on("in_doubt", (r) => events.push(r));
  return { c, net, errors, events };
}

test("opts in with tether_up=seq on every connection; sends nothing before the welcome", async () => {
  const { c, net } = client();
  const ws = net.last;
  assert.equal(ws.url.searchParams.get("tether_up"), "seq");
  assert.equal(ws.url.searchParams.get("room"), "1");
  const a = track(c.send("a"));
  assert.deepEqual(ws.sent, []);
  assert.deepEqual(c.upstreamStats, { unackedMessages: 1, unackedBytes: 1, waiting: 0, ackedSeq: 0, acked: 0, resends: 0, inDoubt: 0, failed: 0 });
  ws.welcome({ up: UP(1, 0) });
  assert.deepEqual(ws.sent, ["1:a"]);
  c.send("b");
  assert.deepEqual(ws.sent, ["1:a", "2:b"]);
  ws.ack(1);
  await settle();
  assert.equal(a.status, "ok");
  ws.drop();
  const ws2 = await net.socket(2);
  assert.equal(ws2.url.searchParams.get("tether_up"), "seq");
  assert.deepEqual(ws2.protocols, ["tether.v1", "tether.session.tok"]);
  c.close();
});

test("without the option: send() returns a boolean, no tether_up, welcome.up is null", async () => {
  const net = scriptedSockets();
  const welcomes = [];
  const c = new TetherClient("ws://t/feed?tether_up=seq", { WebSocket: net.WebSocket, wakeOnBrowserEvents: false });
  c.on("welcome", (w) => welcomes.push(w));
  assert.equal(net.last.url.searchParams.has("tether_up"), false);
  assert.equal(c.send("x"), true);
  net.last.welcome({ up: UP(1, 0) });
  assert.deepEqual(net.last.sent, ["x"]);
  assert.equal(welcomes[0].up, null);
  assert.equal(c.send("y"), true);
  assert.deepEqual(net.last.sent, ["x", "y"]);
  c.close();
  assert.equal(c.send("z"), false);
});

test("up_ack resolves in order, cumulatively; the welcome reports up with conn as a string", async () => {
  const { c, net } = client();
  const welcomes = [];
  c.on("welcome", (w) => welcomes.push(w));
  const ws = net.last;
  ws.raw('#{"type":"welcome","v":1,"session":"tok","outcome":"new","replay":null,"gap":null,"up":{"next":1,"acked":0,"conn":18446744073709551615,"exact":true}}');
  assert.deepEqual(welcomes[0].up, { next: 1, acked: 0, conn: "18446744073709551615", exact: true });
  const p = ["a", "b", "c", "d"].map((d) => track(c.send(d)));
  assert.deepEqual(ws.sent, ["1:a", "2:b", "3:c", "4:d"]);
  ws.ack(2);
  await settle();
  assert.deepEqual(p.map((x) => x.status), ["ok", "ok", "pending", "pending"]);
  ws.ack(2); // a duplicate ack changes nothing
  ws.ack(4);
  await settle();
  assert.deepEqual(p.map((x) => x.status), ["ok", "ok", "ok", "ok"]);
  assert.deepEqual(c.upstreamStats, { unackedMessages: 0, unackedBytes: 0, waiting: 0, ackedSeq: 4, acked: 4, resends: 0, inDoubt: 0, failed: 0 });
  c.close();
});

test("same conn: forgets <= acked, keeps (acked, next), resends >= next with the same seqs, then new ones", async () => {
  const { c, net, events } = client();
  net.last.welcome({ up: UP(1, 0) });
  const p = ["a", "b", "c", "d"].map((d) => track(c.send(d)));
  net.last.drop();
  const e = track(c.send("e")); // while away: waits for the welcome
  const ws2 = await net.socket(2);
  assert.deepEqual(ws2.sent, []);
  ws2.welcome({ outcome: "resumed", up: UP(3, 1) });
  assert.deepEqual(ws2.sent, ["3:c", "4:d", "5:e"]);
  await settle();
  assert.deepEqual([...p, e].map((x) => x.status), ["ok", "pending", "pending", "pending", "pending"]);
  assert.equal(c.upstreamStats.resends, 2);
  ws2.ack(5);
  await settle();
  assert.deepEqual([...p, e].map((x) => x.status), ["ok", "ok", "ok", "ok", "ok"]);
  assert.deepEqual(events, []);
  c.close();
});

test("new conn, exact: messages >= next that were sent on the old one are resent", async () => {
  const { c, net, events } = client();
  net.last.welcome({ up: UP(1, 0, "7") });
  const p = ["a", "b", "c"].map((d) => track(c.send(d)));
  net.last.drop(1012);
  const ws2 = await net.socket(2);
  ws2.welcome({ outcome: "restarted", up: UP(2, 0, "8", true) });
  assert.deepEqual(ws2.sent, ["2:b", "3:c"]); // 1 was accepted by the old conn: tether acks it once written
  c.send("d");
  assert.deepEqual(ws2.sent, ["2:b", "3:c", "4:d"]);
  ws2.ack(4);
  await settle();
  assert.deepEqual(p.map((x) => x.status), ["ok", "ok", "ok"]);
  assert.deepEqual(events, []);
  c.close();
});

test("new conn, not exact, policy report: in_doubt event, promises reject in_doubt, later ones restamped from next", async () => {
  const { c, net, events } = client();
  net.last.welcome({ up: UP(1, 0, "7") });
  const p = ["a", "b", "c", "d"].map((d) => track(c.send(d)));
  net.last.ack(1);
  net.last.drop();
  const e = track(c.send("e"));
  const ws2 = await net.socket(2);
  ws2.welcome({ outcome: "restarted", up: UP(3, 1, "9", false) });
  assert.deepEqual(events, [{ messages: [{ seq: 3, data: "c" }, { seq: 4, data: "d" }], policy: "report", cause: "crash" }]);
  assert.deepEqual(ws2.sent, ["3:e"]);
  await settle();
  assert.deepEqual([...p, e].map((x) => x.status), ["ok", "pending", "in_doubt", "in_doubt", "pending"]);
  assert.ok(p[2].error instanceof TetherUpstreamError);
  assert.equal(p[2].error.seq, 3);
  assert.equal(p[2].error.data, "c");
  ws2.ack(3);
  await settle();
  assert.deepEqual([...p, e].map((x) => x.status), ["ok", "ok", "in_doubt", "in_doubt", "ok"]);
  assert.deepEqual(c.upstreamStats, { unackedMessages: 0, unackedBytes: 0, waiting: 0, ackedSeq: 3, acked: 3, resends: 0, inDoubt: 2, failed: 2 });
  c.close();
});

test("policies resend and drop", async () => {
  for (const [policy, sent, status] of [["resend", ["2:b", "3:c", "4:x"], "pending"], ["drop", ["2:x"], "dropped"]]) {
    const { c, net, events } = client({ onInDoubt: policy });
    net.last.welcome({ up: UP(1, 0, "7") });
    const p = ["a", "b", "c"].map((d) => track(c.send(d)));
    net.last.drop();
    c.send("x");
    const ws2 = await net.socket(2);
    ws2.welcome({ outcome: "restarted", up: UP(2, 0, "8", false) });
    assert.deepEqual(events, [{ messages: [{ seq: 2, data: "b" }, { seq: 3, data: "c" }], policy, cause: "crash" }], policy);
    assert.deepEqual(ws2.sent, sent, policy);
    await settle();
    assert.deepEqual(p.map((x) => x.status), ["pending", status, status], policy);
    c.close();
  }
});

test("a gap that starts a new session: every sent message is in doubt, seqs start again at 1", async () => {
  const { c, net, events } = client();
  net.last.welcome({ up: UP(1, 0, "7") });
  const p = ["a", "b"].map((d) => track(c.send(d)));
  net.last.drop();
  const ws2 = await net.socket(2);
  const gap = { reason: "journal_lost", requested_offset: 0, first_available: 1, lost: { from: 1, to: null } };
  ws2.welcome({ outcome: "gap", gap, up: UP(1, 0, "1", true) });
  assert.deepEqual(events, [{ messages: [{ seq: 1, data: "a" }, { seq: 2, data: "b" }], policy: "report", cause: "new_session" }]);
  c.send("c");
  assert.deepEqual(ws2.sent, ["1:c"]);
  await settle();
  assert.deepEqual(p.map((x) => x.status), ["in_doubt", "in_doubt"]);
  c.close();
});

test("the buffer is bounded by messages and bytes: send() waits for room, in order", async () => {
  const { c, net } = client({ maxUnackedMessages: 2, maxUnackedBytes: 5 });
  const ws = net.last;
  ws.welcome({ up: UP(1, 0) });
  const p = ["a", "b", "c"].map((d) => track(c.send(d)));
  assert.deepEqual(ws.sent, ["1:a", "2:b"]);
  assert.equal(c.upstreamStats.waiting, 1);
  ws.ack(1);
  assert.deepEqual(ws.sent, ["1:a", "2:b", "3:c"]);
  ws.ack(3);
  await settle();
  assert.deepEqual(p.map((x) => x.status), ["ok", "ok", "ok"]);
  // Bytes: UTF-8 ("é" is 2), and one message over the limit still goes alone.
  c.send("éé"); // 4 bytes
  c.send("xy"); // would make 6: waits
  c.send("0123456789"); // waits behind it
  assert.deepEqual(ws.sent.slice(3), ["4:éé"]);
  assert.deepEqual({ ...c.upstreamStats, acked: 0 }, { unackedMessages: 1, unackedBytes: 4, waiting: 2, ackedSeq: 3, acked: 0, resends: 0, inDoubt: 0, failed: 0 });
  ws.ack(4);
  assert.deepEqual(ws.sent.slice(3), ["4:éé", "5:xy"]);
  ws.ack(5);
  assert.deepEqual(ws.sent.slice(3), ["4:éé", "5:xy", "6:0123456789"]);
  c.close();
});

test("binary messages are stamped and copied: reusing the buffer does not change a resend", async () => {
  const { c, net } = client();
  net.last.welcome({ up: UP(1, 0) });
  const buf = new Uint8Array([1, 2, 3]);
  c.send(buf.subarray(1));
  c.send(buf.buffer);
  buf.fill(9);
  assert.deepEqual(net.last.sent, [[0, 0, 0, 0, 0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 3]]);
  net.last.drop();
  const ws2 = await net.socket(2);
  ws2.welcome({ outcome: "resumed", up: UP(1, 0) });
  assert.deepEqual(ws2.sent, [[0, 0, 0, 0, 0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 3]]);
  assert.throws(() => c.send(42), TypeError);
  c.close();
});

test("end: acked messages resolve, the rest (sent, unsent and waiting) reject with ended", async () => {
  const { c, net } = client({ maxUnackedMessages: 3 });
  const ws = net.last;
  ws.welcome({ up: UP(1, 0) });
  const p = ["a", "b", "c", "d"].map((d) => track(c.send(d)));
  const ends = [];
  c.on("end", (code, reason) => ends.push([code, reason]));
  ws.frame({ type: "end", code: 1000, reason: "bye", up: { acked: 1 } });
  await settle();
  assert.deepEqual(p.map((x) => x.status), ["ok", "ended", "ended", "ended"]);
  assert.deepEqual(p.map((x) => x.error?.seq ?? 0), [0, 2, 3, 0]);
  assert.deepEqual(ends, [[1000, "bye"]]);
  assert.equal(c.state, "ended");
  const late = track(c.send("e"));
  await settle();
  assert.equal(late.status, "ended");
  assert.deepEqual(c.upstreamStats, { unackedMessages: 0, unackedBytes: 0, waiting: 0, ackedSeq: 1, acked: 1, resends: 0, inDoubt: 0, failed: 4 });
});

test("close() and takeover reject what is not acked", async () => {
  const { c, net } = client();
  net.last.welcome({ up: UP(1, 0) });
  const a = track(c.send("a"));
  c.close();
  const b = track(c.send("b"));
  await settle();
  assert.deepEqual([a.status, b.status], ["closed", "closed"]);

  const t = client();
  t.net.last.welcome({ up: UP(1, 0) });
  const x = track(t.c.send("x"));
  t.net.last.drop(4001);
  await settle();
  assert.equal(x.status, "taken_over");
  assert.equal(t.c.state, "taken_over");
});

test("close 4003/4004 is reported as an error, and the client resumes and resends from next", async () => {
  const { c, net, errors } = client();
  net.last.welcome({ up: UP(1, 0) });
  const p = track(c.send("a"));
  net.last.drop(4004);
  const ws2 = await net.socket(2);
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /4004.*skipped ahead.*resuming/);
  ws2.welcome({ outcome: "resumed", up: UP(1, 0) });
  assert.deepEqual(ws2.sent, ["1:a"]);
  ws2.drop(4003);
  const ws3 = await net.socket(3);
  assert.match(errors[1].message, /4003.*without a valid seq stamp/);
  ws3.welcome({ outcome: "resumed", up: UP(2, 1) });
  await settle();
  assert.equal(p.status, "ok");
  c.close();
});

test("a welcome without up (a tether without the guarantee) stops the client: nothing stamped reaches the backend", async () => {
  const { c, net, errors } = client();
  const p = track(c.send("a"));
  net.last.welcome({});
  await settle();
  assert.deepEqual(net.last.sent, []);
  assert.equal(c.state, "closed");
  assert.equal(p.status, "closed");
  assert.match(errors[0].message, /without `up`/);
  assert.deepEqual(net.last.closedWith, { code: 4000, reason: "client protocol error" });
});

test("after onReset (failed resumes) the old session's sent messages are in doubt", async () => {
  const { c, net, events } = client({ maxFailedResumes: 1 });
  net.last.welcome({ up: UP(1, 0, "7") });
  const a = track(c.send("a"));
  net.last.drop();
  (await net.socket(2)).drop(); // a resume that fails before its welcome: the session is given up
  const ws3 = await net.socket(3);
  assert.equal(ws3.protocols, undefined);
  ws3.welcome({ outcome: "new", session: "tok2", up: UP(1, 0, "1", true) });
  assert.deepEqual(events, [{ messages: [{ seq: 1, data: "a" }], policy: "report", cause: "new_session" }]);
  await settle();
  assert.equal(a.status, "in_doubt");
  c.close();
});

test("kept (acked, next) messages survive a second reconnect; a resend that never went out is not judged again", async () => {
  const { c, net, events } = client();
  net.last.welcome({ up: UP(1, 0, "7") });
  const p = ["a", "b", "c", "d"].map((d) => track(c.send(d)));
  net.last.drop();
  const ws2 = await net.socket(2);
  // Exact, new conn: 1..2 accepted (pending), 3..4 to resend; the socket dies before they go out.
  ws2.readyState = 3;
  ws2.welcome({ outcome: "restarted", up: UP(3, 0, "8", true) });
  assert.deepEqual(ws2.sent, []);
  ws2.drop();
  const ws3 = await net.socket(3);
  // Not exact now, but 3..4 were never sent on conn 8: they are sent, not in doubt.
  ws3.welcome({ outcome: "restarted", up: UP(3, 2, "9", false) });
  assert.deepEqual(ws3.sent, ["3:c", "4:d"]);
  assert.deepEqual(events, []);
  ws3.ack(4);
  await settle();
  assert.deepEqual(p.map((x) => x.status), ["ok", "ok", "ok", "ok"]);
  assert.equal(c.upstreamStats.resends, 2);
  c.close();
});

test("a rejection nobody awaits is not an unhandled rejection", async () => {
  const unhandled = [];
  const onUnhandled = (e) => unhandled.push(e);
  process.on("unhandledRejection", onUnhandled);
  try {
    const { c, net } = client();
    net.last.welcome({ up: UP(1, 0) });
    c.send("a");
    c.send("b");
    c.close();
    c.send("c");
    await settle();
    await settle();
  } finally {
    process.off("unhandledRejection", onUnhandled);
  }
  assert.deepEqual(unhandled, []);
});

test("a malformed up object or up_ack stops the client (nothing is guessed)", async () => {
  for (const [what, play] of [
    ["acked not below next", (ws) => ws.welcome({ up: UP(3, 3) })],
    ["next 0", (ws) => ws.welcome({ up: UP(0, 0) })],
    ["no conn", (ws) => ws.welcome({ up: { next: 1, acked: 0, exact: true } })],
    ["exact not a boolean", (ws) => ws.welcome({ up: { next: 1, acked: 0, conn: 7, exact: 1 } })],
    ["up_ack without a seq", (ws) => { ws.welcome({ up: UP(1, 0) }); ws.frame({ type: "up_ack" }); }],
  ]) {
    const { c, net, errors } = client();
    const p = track(c.send("a"));
    play(net.last);
    await settle();
    assert.equal(c.state, "closed", what);
    assert.equal(p.status, "closed", what);
    assert.equal(errors[0].name, "TetherProtocolError", what);
    assert.deepEqual(net.last.closedWith, { code: 4000, reason: "client protocol error" }, what);
  }
});
