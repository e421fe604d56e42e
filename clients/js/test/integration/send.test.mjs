import { test } from "node:test";
import assert from "node:assert/strict";
import { stack } from "../helpers/harness.mjs";
import { stateIs, until } from "../helpers/wait.mjs";

const T = { timeout: 30_000 };

test("send() while away queues up to the limit, flushed after the welcome", T, async (t) => {
  const s = await stack(t);
  const r = s.client({ sendQueueLimit: 2 });
  await r.welcome();
  await s.backend.connection(1);
  assert.equal(r.client.send("up1"), true);
  await until(() => s.backend.received.length === 1, "up1 at the backend");

  s.proxy.block();
  const away = stateIs(r.client, "reconnecting");
  s.proxy.cut();
  await away;
  assert.equal(r.client.send("q1"), true);
  assert.equal(r.client.send(new Uint8Array([7, 8])), true);
  assert.equal(r.client.send("q3"), false); // over the bound
  const back = r.welcome();
  s.proxy.unblock();
  await back;
  await until(() => s.backend.received.length === 3, "the queue at the backend");
  assert.deepEqual(s.backend.received, ["up1", "q1", Buffer.from([7, 8])]);
});

test("sendQueueLimit 0 refuses while away", T, async (t) => {
  const s = await stack(t);
  const r = s.client({ sendQueueLimit: 0 });
  await r.welcome();
  s.proxy.block();
  const away = stateIs(r.client, "reconnecting");
  s.proxy.cut();
  await away;
  assert.equal(r.client.send("x"), false);
});
