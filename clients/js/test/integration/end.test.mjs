import { test } from "node:test";
import assert from "node:assert/strict";
import { memoryStorage, stack } from "../helpers/harness.mjs";
import { nextEvent, until } from "../helpers/wait.mjs";

const T = { timeout: 30_000 };

test("the backend closes: onEnd after the last frame, no reconnect", T, async (t) => {
  const s = await stack(t);
  const storage = memoryStorage();
  const ends = [];
  const r = s.client({ storage, onEnd: (code, reason) => ends.push({ code, reason, seen: [...r.seqs] }) });
  await r.welcome();
  await s.backend.connection(1);
  assert.equal(storage.map.size, 1);
  const ended = nextEvent(r.client, "end");
  s.backend.send(3);
  s.backend.end(4100, "bye");
  await ended;

  assert.deepEqual(ends, [{ code: 4100, reason: "bye", seen: [1, 2, 3] }]);
  assert.equal(r.client.state, "ended");
  assert.equal(storage.map.size, 0); // a reload starts a new session
  assert.equal(r.client.send("late"), false);
  assert.equal(s.proxy.stats.accepted, 1);
});

test("close() ends the session: the backend gets close 1000", T, async (t) => {
  const s = await stack(t);
  const r = s.client();
  await r.welcome();
  await s.backend.connection(1);
  s.backend.send(1);
  await r.delivered(1);
  r.client.close("done");
  assert.equal(r.client.state, "closed");
  await until(() => s.backend.closes.length === 1, "the backend's close");
  assert.deepEqual(s.backend.closes, [{ code: 1000, reason: "done" }]);
  await until(async () => (await s.tether.metric("tether_sessions", { state: "ended" })) === 1, "the session to end");
});
