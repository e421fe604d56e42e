import { test } from "node:test";
import assert from "node:assert/strict";
import { stack } from "../helpers/harness.mjs";
import { range, stateIs, until } from "../helpers/wait.mjs";

test("retention exceeded while away: one gap report, then the retained frames", { timeout: 30_000 }, async (t) => {
  const s = await stack(t, { tether: { maxSessionFrames: 10 } });
  const r = s.client();
  await r.welcome();
  await s.backend.connection(1);
  s.backend.send(3);
  await r.delivered(3);

  s.proxy.block();
  const away = stateIs(r.client, "reconnecting");
  s.proxy.cut();
  await away;
  s.backend.send(27); // seqs 4..30; only the last 10 are kept
  await until(async () => (await s.tether.metric("tether_trimmed_frames_total", { reason: "max_frames" })) === 20, "20 frames trimmed");
  const back = r.welcome();
  s.proxy.unblock();
  const w = await back;
  await r.delivered(13);

  assert.equal(w.outcome, "gap");
  const expected = { reason: "trimmed", requestedOffset: 3, firstAvailable: 21, lost: { from: 4, to: 20 }, midStream: false, newSession: false };
  assert.deepEqual(w.gap, expected);
  assert.deepEqual(r.gaps, [expected]);
  assert.deepEqual(r.seqs, [1, 2, 3, ...range(21, 30)]);
  assert.deepEqual(r.data, [1, 2, 3, ...range(21, 30)].map((i) => `m${i}`));
  assert.deepEqual(r.errors, []);

  // The next resume starts past the gap, so it is not reported twice.
  const again = r.welcome();
  s.proxy.cut();
  assert.equal((await again).outcome, "resumed");
  s.backend.send(2);
  await r.delivered(15);
  assert.deepEqual(r.seqs.slice(-2), [31, 32]);
  assert.equal(r.gaps.length, 1);
});
