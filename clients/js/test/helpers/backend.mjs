import { WebSocketServer } from "ws";

/**
 * The unmodified backend behind tether: it numbers its messages 1, 2, 3 ...
 * across its connections, so within one tether session message i gets seq i.
 */
export async function startBackend({ payload = (i) => `m${i}` } = {}) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => wss.once("listening", r));
  const conns = [];
  const received = [];
  const closes = [];
  const waiters = [];
  const gotWaiters = [];
  let next = 1;
  let ticker;
  wss.on("connection", (ws, req) => {
    conns.push(ws);
    ws.path = req.url;
    ws.headers = req.headers;
    ws.received = [];
    ws.on("message", (data, isBinary) => {
      const m = isBinary ? Buffer.from(data) : data.toString();
      received.push(m);
      ws.received.push(m);
      for (const w of [...gotWaiters]) w();
    });
    ws.on("close", (code, reason) => closes.push({ code, reason: reason.toString() }));
    for (const w of waiters.splice(0)) w(ws);
  });
  const latest = () => {
    const ws = conns.at(-1);
    if (!ws || ws.readyState !== 1) throw new Error("backend has no open connection");
    return ws;
  };
  const sendOne = (ws) => {
    const p = payload(next++);
    // ws only sends the data, the pong that follows proves tether read it.
    ws.send(p, { binary: typeof p !== "string" });
  };
  return {
    port: wss.address().port,
    url: `ws://127.0.0.1:${wss.address().port}`,
    conns,
    received,
    closes,
    get sent() { return next - 1; },
    /** Sends the next n messages on the latest connection. */
    send(n = 1) {
      const ws = latest();
      for (let i = 0; i < n; i++) sendOne(ws);
    },
    /** Resolves once tether has read everything sent so far (it answers pings in order). */
    flush() {
      const ws = latest();
      return new Promise((r) => { ws.once("pong", r); ws.ping(); });
    },
    /** Resolves once the backend has received `n` client messages (over all its connections). */
    gotMessages(n) {
      if (received.length >= n) return Promise.resolve();
      return new Promise((r) => gotWaiters.push(function w() {
        if (received.length < n) return;
        gotWaiters.splice(gotWaiters.indexOf(w), 1);
        r();
      }));
    },
    /** Resolves with the next new backend connection (or the current one, if count already reached). */
    connection(count) {
      if (conns.length >= count) return Promise.resolve(conns[count - 1]);
      return new Promise((r) => waiters.push(function w(ws) { if (conns.length >= count) r(conns[count - 1]); else waiters.push(w); }));
    },
    /** Sends one message per `everyMs` until `total` were sent, on whichever connection is current. */
    tick(total, everyMs) {
      ticker = setInterval(() => {
        if (next > total) return clearInterval(ticker);
        const ws = conns.at(-1);
        if (ws?.readyState === 1) sendOne(ws);
      }, everyMs);
    },
    end(code, reason) { latest().close(code, reason); },
    close() {
      clearInterval(ticker);
      for (const ws of conns) ws.terminate();
      return new Promise((r) => wss.close(r));
    },
  };
}
