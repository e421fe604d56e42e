// Prints a tether stream and survives drops, in Node ≥ 20:
//
//   cd clients/js && npm ci && npm run build
//   node examples/follow.mjs ws://127.0.0.1:8080/demo
//
// Cut the network (or restart tether) while it runs: it resumes, and the
// seqs continue with nothing lost and nothing twice. Ctrl-C ends the session
// (close 1000). Status lines go to stderr, messages to stdout.
//
// `@tether/client` resolves to this package's own build (dist/), and `ws`
// to its dev dependency: Node 20 has no global WebSocket (Node 22 does).
import { TetherClient } from "@tether/client";

const WebSocket = globalThis.WebSocket ?? (await import("ws")).default;
const url = process.argv[2] ?? "ws://127.0.0.1:8080/demo";

const client = new TetherClient(url, {
  WebSocket,
  maxFailedResumes: 100, // ride out a restart of tether (or of the demo, a rebuild included)
  onMessage({ seq, data, replay }) {
    const text = typeof data === "string" ? data : `<${data.length} bytes>`;
    console.log(`${String(seq).padStart(6)} ${replay ? "replay" : "live  "} ${text}`);
  },
  onGap(g) { console.error(`-- gap (${g.reason}): lost ${g.lost.from}..${g.lost.to ?? "?"}`); },
  onEnd(code, reason) { console.error(`-- session ended: ${code} ${reason}`); },
  onReset(r) { console.error(`-- session given up (${r.reason}); a new one starts`); },
  onError(e) { console.error(`-- error: ${e.message ?? e}`); },
});
client.on("welcome", (w) =>
  console.error(`-- connected: ${w.outcome}, replay ${w.replay ? `${w.replay.from}..${w.replay.to}` : "none"}`));
client.on("state", (s, previous) => { if (s === "reconnecting" && previous === "open") console.error("-- dropped; resuming"); });
client.on("draining", () => console.error("-- tether is draining"));
client.on("takeover", () => console.error("-- another client took the session over"));
process.once("SIGINT", () => {
  client.close("bye"); // ends the session (close 1000)
  setTimeout(() => process.exit(0), 200).unref();
});
