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
  // Seqs 4..200. tether trims in whole 64-frame segments once a session holds
  // the limit plus one chunk (10 + 64): at seq 75 it drops 1..64, at seq 139
  // 65..128, so 129..200 are kept.
  s.backend.send(197);
  await until(async () => (await s.tether.metric("tether_trimmed_frames_total", { reason: "max_frames" })) === 128, "128 frames trimmed");
  const back = r.welcome();
  s.proxy.unblock();
  const w = await back;
  await r.delivered(75);

  assert.equal(w.outcome, "gap");
  const expected = { reason: "trimmed", requestedOffset: 3, firstAvailable: 129, lost: { from: 4, to: 128 }, midStream: false, newSession: false };
  assert.deepEqual(w.gap, expected);
  assert.deepEqual(r.gaps, [expected]);
  assert.deepEqual(r.seqs, [1, 2, 3, ...range(129, 200)]);
  assert.deepEqual(r.data, [1, 2, 3, ...range(129, 200)].map((i) => `m${i}`));
  assert.deepEqual(r.errors, []);

  // The next resume starts past the gap, so it is not reported twice.
  const again = r.welcome();
  s.proxy.cut();
  assert.equal((await again).outcome, "resumed");
  s.backend.send(2);
  await r.delivered(77);
  assert.deepEqual(r.seqs.slice(-2), [201, 202]);
  assert.equal(r.gaps.length, 1);
});

test("a client that falls behind retention while connected gets mid-stream gap frames, each before its jump", { timeout: 60_000 }, async (t) => {
  // 160 frames of 256 KiB: far more than the socket buffers and tether's
  // write buffer hold, so most of them are trimmed before the client reads.
  const big = (i) => `${i}:`.padEnd(256 * 1024, "x");
  const N = 160;
  const s = await stack(t, { tether: { maxSessionFrames: 10 }, backend: { payload: big } });
  const reports = [];
  const r = s.client({ onGap: (g) => reports.push({ after: r.seqs.at(-1) ?? 0, g }) });
  await r.welcome();
  await s.backend.connection(1);
  s.proxy.stall();
  s.backend.send(N);
  // Whole 64-frame segments go once the session holds 10 + 64: 1..64 at seq
  // 75, 65..128 at seq 139.
  await until(async () => (await s.tether.metric("tether_trimmed_frames_total", { reason: "max_frames" })) === 128, "frames trimmed");
  s.proxy.unstall();
  await until(() => r.seqs.at(-1) === N, "the last frame");

  // tether may fill its buffers in several bursts while the client is
  // stalled, and may send two gap frames back to back. Every jump in the
  // seqs must be covered, exactly, by the reports that came right before it.
  // Frames can be trimmed before the first is written: seq 0 stands for the start.
  const all = [0, ...r.seqs];
  const jumps = [];
  for (let i = 1; i < all.length; i++) if (all[i] !== all[i - 1] + 1) jumps.push([all[i - 1], all[i]]);
  assert.ok(jumps.length >= 1);
  assert.deepEqual([...new Set(reports.map((x) => x.after))], jumps.map(([a]) => a));
  for (const [a, b] of jumps) {
    let next = a + 1;
    for (const { g } of reports.filter((x) => x.after === a)) {
      assert.deepEqual(g, { reason: "trimmed", requestedOffset: next - 1, firstAvailable: g.firstAvailable, lost: { from: next, to: g.firstAvailable - 1 }, midStream: true, newSession: false });
      next = g.firstAvailable;
    }
    assert.equal(next, b);
  }
  assert.deepEqual(r.seqs.slice(-10), range(N - 9, N)); // what retention kept
  assert.ok(r.data.every((d, i) => d === big(r.seqs[i])));
  assert.deepEqual(r.errors, []);
  assert.equal(r.client.stats.connections, 1); // no reconnect was needed
  console.log(`mid-stream: ${jumps.length} jumps, ${reports.length} gap frames, delivered ${r.seqs.length} of ${N}`);
});
