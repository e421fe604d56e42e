import WebSocket from "ws";
import { TetherClient } from "../../dist/index.js";
import { startBackend } from "./backend.mjs";
import { startProxy } from "./proxy.mjs";
import { startTether } from "./tether.mjs";
import { nextEvent } from "./wait.mjs";

/** Backend, tether and a cuttable proxy, torn down by `t.after`. */
export async function stack(t, { backend = {}, tether = {} } = {}) {
  const b = await startBackend(backend);
  const th = await startTether({ upstream: b.url, ...tether });
  const proxy = await startProxy(th.dataPort);
  const s = { backend: b, tether: th, proxy, url: `ws://127.0.0.1:${proxy.port}/feed`, clients: [] };
  t.after(async () => {
    for (const c of s.clients) c.close();
    await proxy.close();
    await th.cleanup();
    await b.close();
  });
  s.client = (opts = {}) => {
    const r = record(s.url, opts);
    s.clients.push(r.client);
    return r;
  };
  return s;
}

/** A TetherClient (over the ws package) whose handler records what it is given. */
export function record(url, opts = {}) {
  const seqs = [];
  const data = [];
  const gaps = [];
  const errors = [];
  const waiters = [];
  const client = new TetherClient(url, {
    WebSocket,
    backoff: { initialMs: 5, maxMs: 50 },
    maxFailedResumes: 1_000_000,
    ...opts,
    async onMessage(m) {
      if (opts.onMessage) await opts.onMessage(m);
      seqs.push(m.seq);
      data.push(m.data);
      // The client commits the offset in a microtask after this returns: the
      // next macrotask sees it committed.
      setImmediate(() => { for (const w of [...waiters]) w(); });
    },
  });
  client.on("gap", (g) => gaps.push(g));
  client.on("error", (e) => errors.push(e));
  return {
    client, seqs, data, gaps, errors,
    /** Resolves once the handler has been given `n` messages. */
    delivered(n) {
      if (seqs.length >= n) return Promise.resolve();
      return new Promise((r) => waiters.push(function w() {
        if (seqs.length < n) return;
        waiters.splice(waiters.indexOf(w), 1);
        r();
      }));
    },
    welcome: (pred) => nextEvent(client, "welcome", pred).then(([w]) => w),
  };
}

/** An in-memory TetherStorage, shareable between clients like one tab's sessionStorage. */
export function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => void m.set(k, v), removeItem: (k) => void m.delete(k), map: m };
}
