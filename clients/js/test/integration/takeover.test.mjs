import { test } from "node:test";
import assert from "node:assert/strict";
import { memoryStorage, stack } from "../helpers/harness.mjs";
import { nextEvent, range } from "../helpers/wait.mjs";

test("takeover (4001): the old client stops, the new one carries on from the offset", { timeout: 30_000 }, async (t) => {
  const s = await stack(t);
  const storage = memoryStorage(); // two tabs of one browser session
  const a = s.client({ storage });
  await a.welcome();
  await s.backend.connection(1);
  s.backend.send(3);
  await a.delivered(3);

  const takenOver = nextEvent(a.client, "takeover");
  const b = s.client({ storage });
  const w = await b.welcome();
  await takenOver;

  assert.equal(w.outcome, "resumed");
  // b resumed with a's token (from the shared storage) and got the next one.
  assert.equal(w.session, b.client.token);
  assert.notEqual(w.session, a.client.token);
  assert.equal(a.client.state, "taken_over");
  s.backend.send(2);
  await b.delivered(2);
  assert.deepEqual(b.seqs, [4, 5]);
  assert.deepEqual(a.seqs, range(1, 3));
  assert.equal(s.proxy.stats.accepted, 2); // a did not try again
  assert.equal(s.backend.conns.length, 1);
});
