import { test } from "node:test";
import assert from "node:assert/strict";
import { parseFrame, TetherProtocolError } from "../../dist/index.js";

// Examples from docs/PROTOCOL.md §4 and §7.
test("prefix text: seq, colon, payload unchanged", () => {
  assert.deepEqual(parseFrame("7:hello", "prefix", "seq"), { kind: "data", seq: 7, data: "hello" });
  assert.deepEqual(parseFrame("12:a:b", "prefix", "seq"), { kind: "data", seq: 12, data: "a:b" });
  assert.deepEqual(parseFrame("3:", "prefix", "seq"), { kind: "data", seq: 3, data: "" });
});

test("prefix binary: 8-byte big-endian seq, payload as a view", () => {
  const f = parseFrame(new Uint8Array([0, 0, 0, 0, 0, 0, 1, 2, 1]).buffer, "prefix", "seq");
  assert.equal(f.seq, 258);
  assert.deepEqual([...f.data], [1]);
  const big = new Uint8Array(10);
  new DataView(big.buffer).setUint32(0, 1);
  new DataView(big.buffer).setUint32(4, 5);
  assert.equal(parseFrame(big, "prefix", "seq").seq, 2 ** 32 + 5);
});

test("control frames are recognised and parsed", () => {
  const f = parseFrame('#{"type":"welcome","v":1,"session":"tok","outcome":"new","replay":null,"gap":null}', "prefix", "seq");
  assert.equal(f.kind, "control");
  assert.equal(f.msg.session, "tok");
  assert.equal(parseFrame('#{"type":"end","code":1000,"reason":"bye"}', "json", "seq").msg.type, "end");
});

test("json mode: the injected member is cut back out", () => {
  assert.deepEqual(parseFrame('{"seq":3,"a":1}', "json", "seq"), { kind: "data", seq: 3, data: '{"a":1}' });
  assert.deepEqual(parseFrame('{"seq":3}', "json", "seq"), { kind: "data", seq: 3, data: "{}" });
  assert.deepEqual(parseFrame('{"n":3,"seq":9}', "json", "n"), { kind: "data", seq: 3, data: '{"seq":9}' });
  // Non-objects and objects that already had the field come in prefix form.
  assert.deepEqual(parseFrame('3:{"seq":9}', "json", "seq"), { kind: "data", seq: 3, data: '{"seq":9}' });
  assert.deepEqual(parseFrame("3:nope", "json", "seq"), { kind: "data", seq: 3, data: "nope" });
});

test("malformed frames are protocol errors", () => {
  for (const bad of ["hello", ":x", "-1:x", "1.5:x", "#notjson", '#{"no":"type"}', "12345678901234567:x"]) {
    assert.throws(() => parseFrame(bad, "prefix", "seq"), TetherProtocolError, bad);
  }
  assert.throws(() => parseFrame('{"seq":3,"a":1}', "prefix", "seq"), /stamp.mode json/);
  assert.throws(() => parseFrame('{"a":1}', "json", "seq"), TetherProtocolError);
  assert.throws(() => parseFrame('{"seq":x}', "json", "seq"), TetherProtocolError);
  assert.throws(() => parseFrame(new Uint8Array(7).buffer, "prefix", "seq"), TetherProtocolError);
});
