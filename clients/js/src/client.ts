import { backoffDelay } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { parseFrame, TetherProtocolError } from "./frames.js";
import { parseUpWelcome, toPayload, UpstreamBuffer, type UpstreamFailure } from "./upstream.js";
import type {
  GapReport, ResetInfo, SendResult, State, TetherClientOptions, TetherEvents, TetherMessage, TetherStats,
  TetherStorage, UpstreamStats, UpstreamWelcome, Welcome, WebSocketConstructor, WebSocketLike,
} from "./types.js";

type Outgoing = string | ArrayBufferLike | ArrayBufferView;
const OPEN = 1;

/**
 * One tether session: reconnects and resumes on its own until `close()`, an
 * `end`, or a takeover. See README.md for the guarantees. `U` is true with
 * the `upstream` option, which makes `send()` return a promise of its ack.
 */
/** The marker subprotocol offered with the token; tether selects it when nothing else is. */
const TETHER_PROTOCOL = "tether.v1";
/** The subprotocol entry that carries the token. */
const TOKEN_PROTOCOL_PREFIX = "tether.session.";

export class TetherClient<U extends boolean = false> extends Emitter<TetherEvents> {
  readonly stats: TetherStats = { received: 0, duplicates: 0, delivered: 0, connections: 0 };
  readonly url: string;

  #opts: TetherClientOptions<U>;
  #WS: WebSocketConstructor;
  #storage: TetherStorage | undefined;
  #storageKey: string;
  #ws: WebSocketLike | null = null;
  #state: State = "connecting";
  #token: string | null = null;
  #offset = 0;
  // Bumped when queued work must not run any more (new session, or a
  // redelivery): work remembers the epoch it was queued in.
  #epoch = 0;
  #chain: Promise<void> = Promise.resolve();
  #welcomed = false;
  #replayTo = 0;
  #endSeen = false;
  #attempt = 0;
  #failedResumes = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #outbox: Outgoing[] = [];
  #unwatch: (() => void) | undefined;
  // The upstream guarantee (null without the option): the unacked messages,
  // the backend connection named by this socket's welcome (null before it),
  // and whether the session they were sent in was given up (#reset).
  #up: UpstreamBuffer | null = null;
  #upConn: string | null = null;
  #upSessionLost = false;

  constructor(url: string | URL, options: TetherClientOptions<U> = {}) {
    super();
    this.#opts = options;
    this.url = toWsUrl(url);
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError("no global WebSocket: pass the WebSocket option (e.g. from the ws package)");
    this.#WS = WS;
    this.#storage = options.storage;
    this.#storageKey = options.storageKey ?? "tether:" + this.url;
    if (options.upstream) {
      this.#up = new UpstreamBuffer(options.maxUnackedMessages ?? 1000, options.maxUnackedBytes ?? 1 << 20, options.onInDoubt ?? "report");
    }
    if (options.onGap) this.on("gap", options.onGap);
    if (options.onEnd) this.on("end", options.onEnd);
    if (options.onReset) this.on("reset", options.onReset);
    if (options.onError) this.on("error", options.onError);
    this.#load();
    if (options.wakeOnBrowserEvents !== false) this.#unwatch = watchBrowser(() => this.#wake());
    this.#connect();
  }

  get state(): State { return this.#state; }
  /** Last seq fully processed by onMessage (0 if none). */
  get offset(): number { return this.#offset; }
  get token(): string | null { return this.#token; }
  /** The upstream buffer's figures (all zero without the `upstream` option). */
  get upstreamStats(): UpstreamStats {
    return this.#up?.stats ?? { unackedMessages: 0, unackedBytes: 0, waiting: 0, ackedSeq: 0, acked: 0, resends: 0, inDoubt: 0, failed: 0 };
  }

  /**
   * With `upstream: true`: stamps the message with the session's next seq,
   * sends it once a connection is welcomed, resends it after drops until
   * tether acks it, and returns a promise that resolves with that ack (the
   * message was written to the backend connection) or rejects with a
   * `TetherUpstreamError`. When `maxUnackedMessages`/`maxUnackedBytes` are
   * reached the message waits for room; the promise covers the wait.
   *
   * Without it: sends if connected, else queues up to `sendQueueLimit`
   * messages for the next connection, and returns false if refused. Such
   * messages have no delivery guarantee: one in flight when the connection
   * drops is lost.
   */
  send(data: Outgoing): SendResult<U> {
    if (this.#up) return this.#sendUp(data) as SendResult<U>;
    return this.#sendPlain(data) as SendResult<U>;
  }

  #sendUp(data: Outgoing): Promise<void> {
    const payload = toPayload(data);
    if (this.#terminal()) {
      return this.#up!.refuse(payload, failure(this.#state));
    }
    const p = this.#up!.push(payload);
    this.#flushUp();
    return p;
  }

  /** Sends what the upstream buffer has not sent on this connection, once it is welcomed. */
  #flushUp(): void {
    const ws = this.#ws;
    if (!this.#up || this.#upConn === null || this.#state !== "open" || ws?.readyState !== OPEN) return;
    this.#up.flush(this.#upConn, (frame) => ws.send(frame));
  }

  #sendPlain(data: Outgoing): boolean {
    if (this.#terminal()) return false;
    if (this.#state === "open" && this.#ws?.readyState === OPEN) {
      this.#ws.send(data);
      return true;
    }
    if (this.#outbox.length >= (this.#opts.sendQueueLimit ?? 100)) return false;
    this.#outbox.push(data);
    return true;
  }

  /** Ends the session at tether (close 1000) and stops reconnecting. */
  close(reason = ""): void {
    if (this.#terminal()) return;
    const ws = this.#ws;
    this.#epoch++; // the handler is not called after close()
    this.#stop("closed");
    this.#forget();
    // While disconnected there is nobody to tell: tether orphans the session after `session.linger`.
    ws?.close(1000, reason);
  }

  #connect(): void {
    this.#timer = undefined;
    const u = new URL(this.url);
    u.searchParams.delete("tether_session");
    u.searchParams.delete("tether_offset");
    const resuming = this.#token !== null;
    const own = this.#opts.protocols;
    const protocols = typeof own === "string" ? [own] : [...(own ?? [])];
    if (this.#token !== null) {
      // The offset is not secret; the token is, and a URL lands in access
      // logs: it goes in Sec-WebSocket-Protocol, which tether removes
      // before the backend sees it (docs/PROTOCOL.md §2).
      u.searchParams.set("tether_offset", String(this.#offset));
      if (this.#opts.tokenIn === "query") u.searchParams.set("tether_session", this.#token);
      else protocols.push(TETHER_PROTOCOL, TOKEN_PROTOCOL_PREFIX + this.#token);
    }
    // Browsers cannot set headers: the query parameter opts in (§12).
    u.searchParams.delete("tether_up");
    if (this.#up) u.searchParams.set("tether_up", "seq");
    this.#upConn = null;
    this.#welcomed = false;
    this.#endSeen = false;
    this.#setState("connecting");
    let ws: WebSocketLike;
    try {
      ws = new this.#WS(u.toString(), protocols.length > 0 ? protocols : undefined) as WebSocketLike;
    } catch (err) {
      this.emit("error", asError(err));
      this.#retry(resuming);
      return;
    }
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => { if (ws === this.#ws) this.#onRaw(ev.data); };
    ws.onclose = (ev) => { if (ws === this.#ws) this.#onClose(ev.code, resuming); };
    ws.onerror = () => {}; // a close event always follows
    this.#ws = ws;
  }

  #onRaw(raw: unknown): void {
    let frame;
    try {
      frame = parseFrame(raw, this.#opts.stampMode ?? "prefix", this.#opts.jsonField ?? "seq");
    } catch (err) {
      // A wrong stampMode would misread every frame: stop rather than guess.
      return this.#protocolError(asError(err));
    }
    if (frame.kind === "control") return this.#onControl(frame.msg, raw as string);
    this.stats.received++;
    const msg: TetherMessage = { seq: frame.seq, data: frame.data, replay: frame.seq <= this.#replayTo };
    this.#enqueue(async (epoch) => {
      // Frames received but not yet processed come again after a resume.
      if (msg.seq <= this.#offset) { this.stats.duplicates++; return; }
      if (msg.seq !== this.#offset + 1) {
        this.emit("error", new TetherProtocolError(`seq ${msg.seq} after ${this.#offset} without a gap report`));
      }
      try {
        await this.#opts.onMessage?.(msg);
      } catch (err) {
        if (epoch === this.#epoch) this.#redeliver(err);
        return;
      }
      if (epoch !== this.#epoch) return;
      this.#offset = msg.seq;
      this.stats.delivered++;
      this.#save();
    });
  }

  #onControl(msg: { type: string; [k: string]: unknown }, raw: string): void {
    switch (msg.type) {
      case "welcome": return this.#onWelcome(msg, raw);
      case "up_ack": {
        if (!this.#up) return;
        const w = msg.seq;
        if (!Number.isSafeInteger(w) || (w as number) < 0) {
          return this.#protocolError(new TetherProtocolError(`malformed up_ack: ${raw}`));
        }
        this.#up.ack(w as number);
        return this.#flushUp(); // acks make room for waiting messages
      }
      case "gap": {
        const report = toGap(msg, true);
        return this.#enqueue(() => this.#applyGap(report));
      }
      case "draining": return this.emit("draining");
      case "end": {
        this.#endSeen = true;
        const code = Number(msg.code), reason = String(msg.reason ?? "");
        // What was written is acked; the rest never will be.
        const up = msg.up as { acked?: unknown } | undefined;
        this.#up?.end(Number.isSafeInteger(up?.acked) ? (up!.acked as number) : 0);
        this.#stop("ended");
        this.#forget();
        return this.#enqueue(() => this.emit("end", code, reason));
      }
    }
    // Unknown control types are for newer clients: ignoring them is the contract.
  }

  #onWelcome(msg: { [k: string]: unknown }, raw: string): void {
    const gap = msg.gap ? toGap(msg.gap as Record<string, unknown>, false) : null;
    const replay = (msg.replay as Welcome["replay"]) ?? null;
    let up: UpstreamWelcome | null = null;
    if (this.#up) {
      try {
        up = parseUpWelcome(msg.up, raw);
      } catch (err) {
        // Without `up`, tether would hand the stamps to the backend: stop.
        return this.#protocolError(asError(err));
      }
    }
    const welcome: Welcome = { session: String(msg.session), outcome: msg.outcome as Welcome["outcome"], replay, gap, up };
    this.#welcomed = true;
    this.#attempt = 0;
    this.#failedResumes = 0;
    this.stats.connections++;
    this.#token = welcome.session;
    this.#replayTo = replay?.to ?? 0;
    if (gap?.newSession) {
      // The old session is gone: what is still queued from it is in the
      // reported lost range, and the new session's seqs start at 1.
      this.#epoch++;
      this.#offset = 0;
    }
    this.#save();
    // Before the state event, so that a listener sees the buffer as tether does.
    const inDoubt = up && this.#up ? this.#up.welcome(up, this.#upSessionLost || !!gap?.newSession) : null;
    this.#upSessionLost = false;
    this.#upConn = up?.conn ?? null;
    this.#setState("open");
    this.emit("welcome", welcome);
    if (inDoubt) this.emit("in_doubt", inDoubt);
    if (gap) this.#enqueue(() => this.#applyGap(gap));
    const ws = this.#ws;
    for (const m of this.#outbox.splice(0)) ws?.send(m);
    this.#flushUp();
  }

  // A frame or field the client cannot read: guessing could misread the
  // session (or send stamps to the backend), so the client stops.
  #protocolError(err: Error): void {
    this.emit("error", err);
    const ws = this.#ws;
    this.#stop("closed");
    ws?.close(4000, "client protocol error");
  }

  #applyGap(report: GapReport): void {
    // Skipping past the trimmed range keeps the next resume from reporting it again.
    if (!report.newSession && report.firstAvailable - 1 > this.#offset) {
      this.#offset = report.firstAvailable - 1;
      this.#save();
    }
    this.emit("gap", report);
  }

  #onClose(code: number, resuming: boolean): void {
    this.#ws = null;
    if (this.#terminal()) return;
    if (this.#endSeen) return this.#stop("ended");
    if (code === 4001) {
      this.#epoch++; // the connection that took over delivers the rest
      this.#stop("taken_over");
      this.emit("takeover");
      return;
    }
    if (code === 4003 || code === 4004) {
      // tether refused an upstream stamp: a bug of this client, not of the
      // session. The resume's welcome says where to continue.
      const what = code === 4003 ? "a message without a valid seq stamp" : "a seq that skipped ahead";
      this.emit("error", new TetherProtocolError(`tether closed the connection with ${code}: it got ${what} (a client bug); resuming`));
    }
    this.#retry(resuming && !this.#welcomed);
  }

  #retry(failedResume: boolean): void {
    // A browser that knows it is offline says nothing about the session: only
    // failures while online count towards giving it up.
    const offline = (globalThis as { navigator?: { onLine?: boolean } }).navigator?.onLine === false;
    if (failedResume && !offline && ++this.#failedResumes >= (this.#opts.maxFailedResumes ?? 8)) this.#reset();
    const delay = backoffDelay(this.#attempt++, this.#opts.backoff, this.#opts.random);
    this.#setState("reconnecting");
    this.#timer = setTimeout(() => this.#connect(), delay);
  }

  // A browser cannot read why an upgrade was refused (401, 409 ...): after
  // enough failures the session is presumed unusable.
  #reset(): void {
    const info: ResetInfo = { reason: "failed_resumes", failedAttempts: this.#failedResumes, lastOffset: this.#offset };
    this.#token = null;
    this.#offset = 0;
    this.#failedResumes = 0;
    // The next welcome is a new session's: what was sent in this one is in doubt.
    this.#upSessionLost = true;
    this.#epoch++;
    this.#forget();
    this.#enqueue(() => this.emit("reset", info));
  }

  #redeliver(err: unknown): void {
    // The failed frame is not committed, so resuming brings it (and what
    // followed) back. Queued frames would only be duplicates.
    this.emit("error", asError(err));
    this.#epoch++;
    const ws = this.#ws;
    if (!ws) return; // already waiting to reconnect, which resumes from the offset
    // Forgetting the socket first keeps its remaining frames and its close event out.
    this.#ws = null;
    ws.close(4000, "handler failed");
    this.#retry(false);
  }

  #wake(): void {
    if (this.#state !== "reconnecting") return;
    clearTimeout(this.#timer);
    this.#connect();
  }

  #enqueue(work: (epoch: number) => void | Promise<void>): void {
    const epoch = this.#epoch;
    this.#chain = this.#chain.then(() => (epoch === this.#epoch ? work(epoch) : undefined)).catch((err) => {
      this.emit("error", asError(err));
    });
  }

  #terminal(): boolean {
    return this.#state === "closed" || this.#state === "ended" || this.#state === "taken_over";
  }

  #stop(state: State): void {
    clearTimeout(this.#timer);
    this.#unwatch?.();
    this.#unwatch = undefined;
    this.#outbox.length = 0;
    this.#ws = null;
    this.#upConn = null;
    this.#setState(state);
    // After the state event: a listener that sends sees the terminal state, and its promise rejects too.
    this.#up?.failAll(failure(state));
  }

  #setState(state: State): void {
    const prev = this.#state;
    if (prev === state) return;
    this.#state = state;
    this.emit("state", state, prev);
  }

  #load(): void {
    const raw = this.#storage?.getItem(this.#storageKey);
    if (!raw) return;
    try {
      const saved = JSON.parse(raw) as { token?: unknown; offset?: unknown };
      if (typeof saved.token === "string" && Number.isSafeInteger(saved.offset) && (saved.offset as number) >= 0) {
        this.#token = saved.token;
        this.#offset = saved.offset as number;
      }
    } catch {
      // A corrupt entry just means a new session.
    }
  }

  #save(): void {
    if (this.#token === null || this.#terminal()) return;
    this.#storage?.setItem(this.#storageKey, JSON.stringify({ token: this.#token, offset: this.#offset }));
  }

  #forget(): void {
    this.#storage?.removeItem(this.#storageKey);
  }
}

/** Why an upstream message fails in a terminal state. */
function failure(state: State): UpstreamFailure {
  return state === "ended" ? "ended" : state === "taken_over" ? "taken_over" : "closed";
}

function toGap(raw: Record<string, unknown>, midStream: boolean): GapReport {
  const lost = (raw.lost ?? {}) as { from?: number; to?: number | null };
  const reason = String(raw.reason);
  return {
    reason,
    requestedOffset: Number(raw.requested_offset),
    firstAvailable: Number(raw.first_available),
    lost: { from: Number(lost.from), to: lost.to ?? null },
    midStream,
    newSession: reason !== "trimmed",
  };
}

function toWsUrl(url: string | URL): string {
  const base = (globalThis as { location?: { href: string } }).location?.href;
  const u = new URL(String(url), base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.toString();
}

function watchBrowser(wake: () => void): (() => void) | undefined {
  const g = globalThis as {
    addEventListener?: (t: string, f: () => void) => void;
    removeEventListener?: (t: string, f: () => void) => void;
    document?: { visibilityState?: string; addEventListener(t: string, f: () => void): void; removeEventListener(t: string, f: () => void): void };
  };
  const doc = g.document;
  if (typeof g.addEventListener !== "function" || !doc) return undefined;
  const onVisible = () => { if (doc.visibilityState === "visible") wake(); };
  g.addEventListener("online", wake);
  doc.addEventListener("visibilitychange", onVisible);
  return () => {
    g.removeEventListener?.("online", wake);
    doc.removeEventListener("visibilitychange", onVisible);
  };
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
