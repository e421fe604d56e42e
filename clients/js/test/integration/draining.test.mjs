import { test } from "node:test";
import assert from "node:assert/strict";
import { stack } from "../helpers/harness.mjs";
import { nextEvent, range } from "../helpers/wait.mjs";

test("tether drains (SIGTERM): draining + 1012, the client resumes once tether is back", { timeout: 30_000 }, async (t) => {
  const s = await stack(t);
  const r = s.client();
  await r.welcome();
  await s.backend.connection(1);
  s.backend.send(3);
  await r.delivered(3);

  const draining = nextEvent(r.client, "draining");
  const away = nextEvent(r.client, "state", (st) => st === "reconnecting");
  await s.tether.stop("SIGTERM");
  await draining;
  await away;
  const back = r.welcome();
  await s.tether.start(); // same port, same journal
  const w = await back;

  assert.equal(w.outcome, "restarted");
  await s.backend.connection(2); // a restart opens a new backend connection
  s.backend.send(2);
  await r.delivered(5);
  assert.deepEqual(r.seqs, range(1, 5));
  assert.deepEqual(r.data, range(1, 5).map((i) => `m${i}`));
  assert.deepEqual(r.errors, []);
});
