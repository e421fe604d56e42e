import { test } from "node:test";
import assert from "node:assert/strict";
import { memoryStorage, stack } from "../helpers/harness.mjs";

test("resumes that keep failing (409 offset_ahead) lead to a new session and onReset", { timeout: 30_000 }, async (t) => {
  const s = await stack(t);
  const a = s.client();
  await a.welcome();
  await s.backend.connection(1);
  s.backend.send(3);
  await a.delivered(3);
  const token = a.client.token;
  a.client.close();

  // Credentials a browser would have persisted, with an offset tether never sent.
  const storage = memoryStorage();
  storage.setItem("k", JSON.stringify({ token, offset: 999 }));
  const resets = [];
  const b = s.client({ storage, storageKey: "k", maxFailedResumes: 3, onReset: (info) => resets.push(info) });
  const w = await b.welcome();

  assert.equal(w.outcome, "new");
  assert.notEqual(w.session, token);
  assert.deepEqual(resets, [{ reason: "failed_resumes", failedAttempts: 3, lastOffset: 999 }]);
  assert.equal(await s.tether.metric("tether_refusals_total", { error: "offset_ahead" }), 3);
  await s.backend.connection(2);
  s.backend.send(2);
  await b.delivered(2);
  assert.deepEqual(b.seqs, [1, 2]); // the new session counts from 1
  assert.deepEqual(b.data, ["m4", "m5"]);
  assert.deepEqual(JSON.parse(storage.getItem("k")), { token: w.session, offset: 2 });
});
