import { test } from "node:test";
import assert from "node:assert/strict";
import { stack } from "../helpers/harness.mjs";
import { range } from "../helpers/wait.mjs";

const T = { timeout: 30_000 };
const norm = (d) => (typeof d === "string" ? d : [...d]);

test("prefix mode: text and binary frames, empty ones included", T, async (t) => {
  const payloads = ["a:b", Buffer.from([0, 255, 1]), "", Buffer.alloc(0), "#not-control", Buffer.from("x".repeat(70000))];
  const s = await stack(t, { backend: { payload: (i) => payloads[i - 1] } });
  const r = s.client();
  await r.welcome();
  await s.backend.connection(1);
  s.backend.send(payloads.length);
  await r.delivered(payloads.length);
  assert.deepEqual(r.seqs, range(1, payloads.length));
  assert.deepEqual(r.data.map(norm), payloads.map(norm));
  assert.ok(r.data[1] instanceof Uint8Array);
});

test("json mode: objects carry the seq field, others the prefix form; the app gets the payload", T, async (t) => {
  const payloads = ['{"a":1}', '{"seq":9}', "[1]", "nope", '{ "b" : [2] }', Buffer.from([1, 2]), "{}", ' \n{"c":3}', '{"d":4} ', " {} "];
  const s = await stack(t, { backend: { payload: (i) => payloads[i - 1] }, tether: { stamp: "json" } });
  const r = s.client({ stampMode: "json" });
  await r.welcome();
  await s.backend.connection(1);
  s.backend.send(payloads.length);
  await r.delivered(payloads.length);
  assert.deepEqual(r.seqs, range(1, payloads.length));
  // tether drops the whitespace before an object's `{`, and an empty object
  // comes back as `{"seq":N}` (docs/PROTOCOL.md §4).
  const expected = payloads.map((p) => (typeof p === "string" && p.trimStart().startsWith("{") ? p.trimStart() : p));
  expected[expected.length - 1] = "{}";
  assert.deepEqual(r.data.map(norm), expected.map(norm));
  assert.deepEqual(r.errors, []);
});
