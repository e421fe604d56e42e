import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay } from "../../dist/index.js";

test("the cap grows exponentially and stops at maxMs", () => {
  const top = () => 0.999999;
  const caps = [0, 1, 2, 3, 4, 5, 6, 100].map((a) => backoffDelay(a, { initialMs: 100, maxMs: 2000, factor: 2 }, top));
  assert.deepEqual(caps, [99, 199, 399, 799, 1599, 1999, 1999, 1999]);
});

test("full jitter: the delay is a uniform draw below the cap", () => {
  assert.equal(backoffDelay(3, { initialMs: 100 }, () => 0), 0);
  assert.equal(backoffDelay(3, { initialMs: 100 }, () => 0.5), 400);
});

test("defaults: 500 ms doubling, 30 s cap", () => {
  assert.equal(backoffDelay(0, undefined, () => 0.5), 250);
  assert.equal(backoffDelay(20, undefined, () => 0.5), 15000);
});
