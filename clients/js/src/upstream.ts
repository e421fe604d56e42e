// The client's half of the upstream guarantee (docs/PROTOCOL.md §12): the
// buffer of messages not yet acked, their seqs, and what a welcome, an
// up_ack and an end do to them. No sockets here: the client hands it a send
// function once a connection is welcomed.
import { TetherProtocolError } from "./frames.js";
import type { InDoubtPolicy, InDoubtReport, UpstreamStats, UpstreamWelcome } from "./types.js";

/** Why a `send()` promise was rejected: the message was not (or maybe not) written to the backend. */
export type UpstreamFailure =
  /** The session ended (the backend closed, or tether's `end`) before the message was written. */
  | "ended"
  /** Sent on a backend connection that tether lost without a drain: maybe written, maybe not (policy `report`). */
  | "in_doubt"
  /** The same, with policy `drop`. */
  | "dropped"
  /** `close()` was called, or a protocol error stopped the client, before the ack. */
  | "closed"
  /** Another connection resumed the session (close 4001) before the ack. */
  | "taken_over";

const WHY: Record<UpstreamFailure, string> = {
  ended: "the session ended before it was written",
  in_doubt: "it is in doubt: tether lost the backend connection without a drain, it may or may not have been written",
  dropped: "it was in doubt and dropped (onInDoubt: \"drop\")",
  closed: "the client was closed before tether acked it",
  taken_over: "another connection took the session over before tether acked it",
};

/** The rejection of an upstream `send()` promise. */
export class TetherUpstreamError extends Error {
  override name = "TetherUpstreamError";
  constructor(
    readonly reason: UpstreamFailure,
    /** The seq it was last sent with; 0 if it was never sent. */
    readonly seq: number,
    /** The payload given to `send()` (binary as a copy). */
    readonly data: string | Uint8Array,
  ) {
    super(`upstream message${seq ? " " + seq : ""} not acked: ${WHY[reason]}`);
  }
}

/**
 * One stamped upstream message: text `"<seq>:<payload>"`, binary 8 bytes of
 * seq (big-endian) then the payload (the downstream `prefix` form, §4).
 */
export function stampUpstream(seq: number, data: string | Uint8Array): string | Uint8Array {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new RangeError(`bad upstream seq ${seq}`);
  if (typeof data === "string") return seq + ":" + data;
  const out = new Uint8Array(8 + data.byteLength);
  const view = new DataView(out.buffer);
  view.setUint32(0, Math.floor(seq / 0x100000000));
  view.setUint32(4, seq >>> 0);
  out.set(data, 8);
  return out;
}

/** Copies what `send()` was given, so that a caller reusing its buffer does not change a message awaiting resend. */
export function toPayload(data: unknown): string | Uint8Array {
  if (typeof data === "string") return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  if (data instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && data instanceof SharedArrayBuffer)) {
    return new Uint8Array(data).slice();
  }
  throw new TypeError("send() takes a string, an ArrayBuffer or a typed array");
}

export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) { n += 4; i++; }
    else n += 3; // a lone surrogate goes out as U+FFFD
  }
  return n;
}

/** Reads the welcome's `up` object; `conn` is taken from the raw text, as a u64 may not fit a double. */
export function parseUpWelcome(up: unknown, raw: string): UpstreamWelcome {
  const o = up as { next?: unknown; acked?: unknown; conn?: unknown; exact?: unknown } | null;
  if (!o || typeof o !== "object") throw new TetherProtocolError("welcome without `up`: does this tether support the upstream guarantee?");
  const { next, acked, exact } = o;
  const at = raw.indexOf('"up"');
  const m = at < 0 ? null : /"conn"\s*:\s*(\d+)/.exec(raw.slice(at));
  const conn = m ? m[1]! : typeof o.conn === "number" || typeof o.conn === "string" ? String(o.conn) : "";
  if (!Number.isSafeInteger(next) || (next as number) < 1 || !Number.isSafeInteger(acked) || (acked as number) < 0 ||
    (acked as number) >= (next as number) || conn === "" || typeof exact !== "boolean") {
    throw new TetherProtocolError(`malformed up object in the welcome: ${JSON.stringify(up)}`);
  }
  return { next: next as number, acked: acked as number, conn, exact };
}

interface Entry {
  data: string | Uint8Array;
  bytes: number;
  /** The seq it is sent with; 0 while it waits to be (re)sent. */
  seq: number;
  /** The seq of its last transmission (0 if none), kept for reports. */
  lastSeq: number;
  /** The backend connection (`conn`) it was last sent on. */
  sentOn: string | null;
  resolve: () => void;
  reject: (err: TetherUpstreamError) => void;
}

export class UpstreamBuffer {
  /** Admitted, in seq order: the sent ones (seq > 0) first, then the ones waiting to be sent. */
  #buf: Entry[] = [];
  /** How many entries at the front of #buf are stamped (sent on this connection, or kept from an earlier one). */
  #stamped = 0;
  /** `send()` calls waiting for room, in order. */
  #waiting: Entry[] = [];
  #bytes = 0;
  #next = 1;
  #acked = 0;
  #counts = { acked: 0, resends: 0, inDoubt: 0, failed: 0 };

  constructor(
    readonly maxMessages: number,
    readonly maxBytes: number,
    readonly policy: InDoubtPolicy,
  ) {
    if (!(maxMessages >= 1)) throw new RangeError("maxUnackedMessages must be at least 1");
    if (!(maxBytes >= 1)) throw new RangeError("maxUnackedBytes must be at least 1");
    if (policy !== "report" && policy !== "resend" && policy !== "drop") throw new RangeError(`onInDoubt must be report, resend or drop, not ${String(policy)}`);
  }

  get stats(): UpstreamStats {
    return {
      unackedMessages: this.#buf.length,
      unackedBytes: this.#bytes,
      waiting: this.#waiting.length,
      ackedSeq: this.#acked,
      ...this.#counts,
    };
  }

  /** Takes a message; it goes out with the next `flush`. The promise settles with its ack or its failure. */
  push(data: string | Uint8Array): Promise<void> {
    let resolve!: () => void, reject!: (err: TetherUpstreamError) => void;
    const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
    // A caller that does not await gets no unhandled rejection: every failure
    // is also an event (end, in_doubt) or its own doing (close).
    promise.catch(() => {});
    const bytes = typeof data === "string" ? utf8Length(data) : data.byteLength;
    this.#waiting.push({ data, bytes, seq: 0, lastSeq: 0, sentOn: null, resolve, reject });
    this.#admit();
    return promise;
  }

  /** A message `send()` cannot take any more (the client is finished). */
  refuse(data: string | Uint8Array, reason: UpstreamFailure): Promise<void> {
    this.#counts.failed++;
    const p = Promise.reject(new TetherUpstreamError(reason, 0, data));
    p.catch(() => {});
    return p;
  }

  /** Stamps and sends, in order, every admitted message not sent on this connection yet. */
  flush(conn: string, send: (frame: string | Uint8Array) => void): void {
    for (; this.#stamped < this.#buf.length; this.#stamped++) {
      const e = this.#buf[this.#stamped]!;
      e.seq = this.#next++;
      if (e.sentOn !== null) this.#counts.resends++;
      e.lastSeq = e.seq;
      e.sentOn = conn;
      send(stampUpstream(e.seq, e.data));
    }
  }

  /** `up_ack`: every message with seq ≤ w was written. */
  ack(w: number): void {
    if (w > this.#acked) this.#acked = w;
    let n = 0;
    while (n < this.#stamped && this.#buf[n]!.seq <= w) n++;
    const done = this.#buf.splice(0, n);
    this.#stamped -= n;
    for (const e of done) {
      this.#bytes -= e.bytes;
      this.#counts.acked++;
      e.resolve();
    }
    this.#admit();
  }

  /**
   * A welcome on an opted-in connection (§12, "What a client does with it").
   * `newSession`: the session the sent messages belong to is gone (a gap that
   * started a new one, or a reset), so every one of them is in doubt.
   * Returns the messages in doubt, if any, after applying the policy.
   */
  welcome(up: UpstreamWelcome, newSession: boolean): InDoubtReport | null {
    if (newSession) {
      this.#acked = up.acked;
    } else {
      this.ack(up.acked);
    }
    const doubts: Entry[] = [];
    for (const e of this.#buf) {
      if (e.seq === 0) continue; // not sent yet
      if (!newSession && e.seq < up.next) continue; // accepted: tether acks it once written
      if (!newSession && (e.sentOn === up.conn || up.exact)) e.seq = 0; // never written: send again
      else doubts.push(e);
    }
    this.#next = up.next;
    let report: InDoubtReport | null = null;
    if (doubts.length) {
      this.#counts.inDoubt += doubts.length;
      report = {
        messages: doubts.map((e) => ({ seq: e.seq, data: e.data })),
        policy: this.policy,
        cause: newSession ? "new_session" : "crash",
      };
      if (this.policy === "resend") {
        for (const e of doubts) e.seq = 0;
      } else {
        const gone = new Set(doubts);
        this.#buf = this.#buf.filter((e) => !gone.has(e));
        for (const e of doubts) this.#bytes -= e.bytes;
        for (const e of doubts) this.#fail(e, this.policy === "drop" ? "dropped" : "in_doubt");
      }
    }
    // What stays stamped is what tether accepted (seq < next); the rest goes out again from next.
    this.#stamped = this.#buf.findIndex((e) => e.seq === 0);
    if (this.#stamped < 0) this.#stamped = this.#buf.length;
    this.#admit();
    return report;
  }

  /** `end` with `up.acked`: what was written is acked, the rest never will be. */
  end(acked: number): void {
    this.ack(acked);
    this.failAll("ended");
  }

  failAll(reason: UpstreamFailure): void {
    const all = [...this.#buf, ...this.#waiting];
    this.#buf = [];
    this.#stamped = 0;
    this.#waiting = [];
    this.#bytes = 0;
    for (const e of all) this.#fail(e, reason);
  }

  /** The caller has taken `e` out of the buffer (and its bytes out of the count). */
  #fail(e: Entry, reason: UpstreamFailure): void {
    this.#counts.failed++;
    e.reject(new TetherUpstreamError(reason, e.lastSeq, e.data));
  }

  #admit(): void {
    while (this.#waiting.length) {
      const e = this.#waiting[0]!;
      // One message larger than maxBytes still goes, alone: refusing it forever would be a deadlock.
      const room = this.#buf.length === 0 || (this.#buf.length < this.maxMessages && this.#bytes + e.bytes <= this.maxBytes);
      if (!room) return;
      this.#waiting.shift();
      this.#buf.push(e);
      this.#bytes += e.bytes;
    }
  }
}
