import { test } from "node:test";
import assert from "node:assert/strict";
import { TetherClient } from "../../dist/index.js";
import { scriptedSockets } from "../helpers/script-ws.mjs";

// docs/PROTOCOL.md §2 and §8: the token goes in Sec-WebSocket-Protocol, never
// in the URL, and every resume uses the token of the last welcome.
const OPTS = { backoff: { initialMs: 0, maxMs: 0 }, wakeOnBrowserEvents: false };

test("resumes offer tether.v1 and the last welcome's token after the app's protocols; the URL carries only the offset", async () => {
  const net = scriptedSockets();
  const c = new TetherClient("ws://t/feed?room=1&tether_session=stale", { ...OPTS, WebSocket: net.WebSocket, protocols: ["chat.v2"] });
  const first = net.last;
  assert.deepEqual(first.protocols, ["chat.v2"]);
  assert.equal(first.url.search, "?room=1");
  first.welcome({ session: "tok0" });
  first.drop();
  const second = await net.socket(2);
  assert.deepEqual(second.protocols, ["chat.v2", "tether.v1", "tether.session.tok0"]);
  assert.equal(second.url.search, "?room=1&tether_offset=0");
  second.welcome({ outcome: "resumed", session: "tok1" });
  assert.equal(c.token, "tok1");
  second.drop();
  const third = await net.socket(3);
  assert.deepEqual(third.protocols, ["chat.v2", "tether.v1", "tether.session.tok1"]);
  assert.ok(!third.url.href.includes("tok"), third.url.href);
  c.close();
});

test("tokenIn: query puts the token back in the URL and offers only the app's protocols", async () => {
  const net = scriptedSockets();
  const c = new TetherClient("ws://t/feed", { ...OPTS, WebSocket: net.WebSocket, protocols: "chat.v2", tokenIn: "query" });
  net.last.welcome({ session: "tok0" });
  net.last.drop();
  const second = await net.socket(2);
  assert.deepEqual(second.protocols, ["chat.v2"]);
  assert.equal(second.url.search, "?tether_offset=0&tether_session=tok0");
  c.close();
});
