/**
 * A scripted stand-in for tether's side of the socket, for unit tests of the
 * client's logic (the integration tests use a real tether). Each socket the
 * client opens is recorded; the test plays tether's frames into it and reads
 * what the client sent.
 */
export function scriptedSockets() {
  const sockets = [];
  const waiters = [];
  class ScriptedSocket {
    binaryType = "blob";
    readyState = 1; // the client waits for the welcome, not for onopen
    onmessage = null;
    onclose = null;
    onerror = null;
    constructor(url, protocols) {
      this.url = new URL(url);
      /** The offered subprotocols, as the client passed them. */
      this.protocols = protocols;
      /** What the client sent: strings as they are, binary as arrays of bytes. */
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
      for (const w of waiters.splice(0)) w();
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(typeof data === "string" ? data : [...new Uint8Array(data.buffer ?? data, data.byteOffset ?? 0, data.byteLength)]);
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // --- tether's side ---
    frame(obj) { this.onmessage?.({ data: "#" + JSON.stringify(obj) }); }
    raw(text) { this.onmessage?.({ data: text }); }
    welcome({ outcome = "new", up, gap = null, session = "tok" } = {}) {
      const w = { type: "welcome", v: 1, session, outcome, replay: null, gap };
      if (up) w.up = up;
      this.frame(w);
    }
    ack(seq) { this.frame({ type: "up_ack", seq }); }
    drop(code = 1006) {
      this.readyState = 3;
      this.onclose?.({ code, reason: "" });
    }
  }
  return {
    WebSocket: ScriptedSocket,
    sockets,
    get last() { return sockets.at(-1); },
    /** Resolves with socket number `n` (1-based) once the client opened it. */
    socket(n) {
      if (sockets.length >= n) return Promise.resolve(sockets[n - 1]);
      return new Promise((r) => waiters.push(function w() { if (sockets.length >= n) r(sockets[n - 1]); else waiters.push(w); }));
    },
  };
}

/** Settles `promises` and returns each outcome: "ok", or the rejection's `reason`. */
export async function outcomes(promises) {
  return (await Promise.allSettled(promises)).map((r) => (r.status === "fulfilled" ? "ok" : r.reason.reason ?? String(r.reason)));
}

/** Follows a promise: `.status` is "pending", then "ok" or the rejection's `reason`; `.error` the rejection. */
export function track(promise) {
  const t = { status: "pending", error: null };
  promise.then(() => { t.status = "ok"; }, (e) => { t.status = e.reason ?? String(e); t.error = e; });
  return t;
}

/** Lets every promise reaction already queued run (settlements are microtasks). */
export const settle = () => new Promise((r) => setImmediate(r));
