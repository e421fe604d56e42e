import { test } from "node:test";
import assert from "node:assert/strict";
import { stack } from "../helpers/harness.mjs";
import { range, stateIs, until } from "../helpers/wait.mjs";

const T = { timeout: 30_000 };

test("after a cut the client resumes with token and offset: seqs 1..10 once, in order", T, async (t) => {
  const s = await stack(t);
  const r = s.client();
  assert.equal((await r.welcome()).outcome, "new");
  await s.backend.connection(1);
  s.backend.send(5);
  await r.delivered(5);

  s.proxy.block();
  const away = stateIs(r.client, "reconnecting");
  assert.equal(s.proxy.cut(), 1);
  await away;
  s.backend.send(5); // sent while the client is away
  await until(async () => (await s.tether.metric("tether_journal_appends_total")) === 10, "10 frames journaled");
  const back = r.welcome();
  s.proxy.unblock();
  const w = await back;

  assert.equal(w.outcome, "resumed");
  assert.deepEqual(w.replay, { from: 6, to: 10 });
  await r.delivered(10);
  assert.deepEqual(r.seqs, range(1, 10));
  assert.deepEqual(r.data, range(1, 10).map((i) => `m${i}`));
  assert.equal(r.client.offset, 10);
  // The backend never saw the drop, nor tether's query parameters.
  assert.equal(s.backend.conns.length, 1);
  assert.equal(s.backend.conns[0].path, "/feed");
  assert.deepEqual(r.errors, []);
});

test("frames received but not processed come again and are dropped by seq", T, async (t) => {
  const s = await stack(t);
  let release;
  const gate = new Promise((res) => { release = res; });
  let entered3;
  const in3 = new Promise((res) => { entered3 = res; });
  const r = s.client({
    async onMessage(m) {
      if (m.seq === 3) { entered3(); await gate; }
    },
  });
  await r.welcome();
  await s.backend.connection(1);
  s.backend.send(10);
  await in3;
  await until(() => r.client.stats.received === 10, "10 frames received");
  assert.equal(r.client.offset, 2); // 3 is still in the handler

  const resumed = r.welcome((w) => w.outcome === "resumed");
  s.proxy.cut();
  const w = await resumed;
  assert.deepEqual(w.replay, { from: 3, to: 10 }); // resumed from offset 2
  await until(() => r.client.stats.received === 18, "the replay of 3..10");
  release();
  await r.delivered(10);
  await until(() => r.client.stats.duplicates === 8, "the replay to be processed");

  assert.deepEqual(r.seqs, range(1, 10));
  assert.deepEqual(r.client.stats, { received: 18, duplicates: 8, delivered: 10, connections: 2 });
  assert.deepEqual(r.errors, []);
});

test("a handler that throws gets the same seq again after a resume", T, async (t) => {
  const s = await stack(t);
  const calls = [];
  const r = s.client({
    onMessage(m) {
      calls.push(m.seq);
      if (m.seq === 3 && calls.filter((x) => x === 3).length === 1) throw new Error("boom");
    },
  });
  await r.welcome();
  await s.backend.connection(1);
  s.backend.send(5);
  await r.delivered(5);

  assert.deepEqual(r.seqs, range(1, 5));
  assert.deepEqual(calls.filter((x) => x === 3), [3, 3]);
  assert.deepEqual(r.errors.map((e) => e.message), ["boom"]);
  assert.equal(r.client.stats.connections, 2);
  assert.equal(s.backend.conns.length, 1);
});
