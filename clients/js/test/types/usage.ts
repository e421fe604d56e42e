// Compiled (not run) by test/unit/types.test.mjs: the public types must
// accept what users pass without casts.
import WebSocket from "ws";
import {
  TetherClient, TetherUpstreamError, type GapReport, type InDoubtReport, type State, type TetherMessage, type UpstreamFailure, type UpstreamStats,
} from "../../dist/index.js";

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
// upstream: true makes send() a promise of the ack; the error is typed.
const up = new TetherClient("ws://127.0.0.1:8080/feed", { WebSocket, upstream: true, onInDoubt: "resend", maxUnackedMessages: 10 });
const acked: Promise<void> = up.send("x");
acked.catch((e: unknown) => {
  if (e instanceof TetherUpstreamError) {
    const r: UpstreamFailure = e.reason;
    void [r, e.seq, e.data];
  }
});
up.on("in_doubt", (r: InDoubtReport) => void r.messages.map((m) => m.seq));
up.on("welcome", (w) => void w.up?.conn.length);
const figures: UpstreamStats = up.upstreamStats;
void figures.unackedBytes;
// @ts-expect-error: with upstream, send() is not a boolean
const notBool: boolean = up.send("y");
void notBool;
// @ts-expect-error: not a policy
new TetherClient("ws://x/", { WebSocket, upstream: true, onInDoubt: "ignore" });
