import net from "node:net";

/** A TCP proxy in front of tether that the test can cut, like a tunnel or a Wi-Fi switch. */
export async function startProxy(targetPort) {
  const pairs = new Set();
  let blocked = false;
  const stats = { accepted: 0, cuts: 0 };
  // The head of every request the client sent and of tether's answer, as
  // bytes on the wire: what an access log of this hop could hold.
  const heads = [];
  const server = net.createServer((down) => {
    if (blocked) return down.resetAndDestroy();
    stats.accepted++;
    const up = net.connect(targetPort, "127.0.0.1");
    const pair = { down, up };
    pairs.add(pair);
    const head = { request: "", response: "" };
    heads.push(head);
    const record = (key) => (chunk) => {
      if (!head[key].includes("\r\n\r\n")) head[key] += chunk.toString("latin1");
    };
    down.on("data", record("request"));
    up.on("data", record("response"));
    const drop = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on("error", drop).on("close", drop);
    up.on("error", drop).on("close", drop);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: server.address().port,
    stats,
    heads,
    /**
     * Resets every open connection (the client sees 1006); returns how many.
     * `both`: tether's side gets a RST too, so bytes the proxy or tether's
     * socket had not passed on yet are lost in both directions.
     */
    cut({ both = false } = {}) {
      const n = pairs.size;
      const reset = (sock) => {
        // A RST is what a dead network looks like. On a socket already
        // half-closed, Node 20's resetAndDestroy() leaves the event loop
        // spinning, and a plain destroy is as good there.
        if (sock.readyState === "open") sock.resetAndDestroy();
        else sock.destroy();
      };
      for (const { down, up } of [...pairs]) {
        reset(down);
        if (both) reset(up);
        else up.destroy();
      }
      pairs.clear();
      if (n) stats.cuts++;
      return n;
    },
    /** Stops reading from tether, like a client too slow to keep up; tether's writes back up. */
    stall() {
      for (const { up, down } of pairs) { up.unpipe(down); up.pause(); }
    },
    /** Stops forwarding the client's bytes to tether; they wait in the proxy (and are lost by a cut). */
    stallToTether() {
      for (const { up, down } of pairs) { down.unpipe(up); down.pause(); }
    },
    unstall() {
      for (const { up, down } of pairs) up.pipe(down);
    },
    /** While blocked, new connections are reset at once. */
    block() { blocked = true; },
    unblock() { blocked = false; },
    close() {
      this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}

export async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}
