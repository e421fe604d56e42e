// Compiled (not run) by test/unit/types.test.mjs: the public types must
// accept what users pass without casts.
import WebSocket from "ws";
import { TetherClient, type GapReport, type State, type TetherMessage } from "../../dist/index.js";

const node = new TetherClient("ws://127.0.0.1:8080/feed", {
  WebSocket,
  async onMessage(m: TetherMessage) {
    const text: string = typeof m.data === "string" ? m.data : new TextDecoder().decode(m.data);
    void text;
  },
  onGap: (g: GapReport) => void g.lost.to,
  onEnd: (code: number, reason: string) => void [code, reason],
  storage: new Map<string, string>() as unknown as Storage,
});
const browser = new TetherClient(new URL("ws://x/"), { WebSocket: globalThis.WebSocket, stampMode: "json" });
const off: () => void = node.on("state", (s: State, prev: State) => void [s, prev]);
off();
browser.on("welcome", (w) => void w.replay?.to);
const sent: boolean = browser.send(new Uint8Array([1]));
void sent;
// @ts-expect-error: not an event
node.on("nope", () => {});
