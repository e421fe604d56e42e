/** How tether stamps data frames (`stamp.mode` in its config). Mode `none` is not supported: it has no control frames. */
export type StampMode = "prefix" | "json";

/**
 * - `connecting`: a socket is opening, no welcome yet.
 * - `open`: the welcome arrived; frames flow.
 * - `reconnecting`: waiting out the backoff before the next attempt.
 * - `ended`: the session ended (`end` frame); no more reconnects.
 * - `taken_over`: another connection resumed this session (close 4001); no more reconnects.
 * - `closed`: `close()` was called, or a protocol error stopped the client.
 */
export type State = "connecting" | "open" | "reconnecting" | "ended" | "taken_over" | "closed";

export type Outcome = "new" | "resumed" | "restarted" | "gap";

export interface TetherMessage {
  seq: number;
  /** Text as the backend sent it; binary as a view without the 8-byte stamp. */
  data: string | Uint8Array;
  /** True if tether had already journaled the frame when this connection started. */
  replay: boolean;
}

export interface GapReport {
  /** `trimmed` keeps the session; any other reason means a new session whose seqs restart at 1. */
  reason: "trimmed" | "expired" | "unknown_session" | "journal_lost" | (string & {});
  requestedOffset: number;
  firstAvailable: number;
  /** Seqs that will never arrive; `to` is null when tether cannot know. */
  lost: { from: number; to: number | null };
  /** True for a `gap` frame while connected, false for one reported in the welcome. */
  midStream: boolean;
  newSession: boolean;
}

export interface Welcome {
  session: string;
  outcome: Outcome;
  replay: { from: number; to: number } | null;
  gap: GapReport | null;
  /** The upstream guarantee's state (docs/PROTOCOL.md §12); null unless the `upstream` option is on. */
  up: UpstreamWelcome | null;
}

/** The `up` object of a welcome (docs/PROTOCOL.md §12). */
export interface UpstreamWelcome {
  /** The seq tether expects next: messages from it on were not accepted and are sent (again). */
  next: number;
  /** Every message with seq ≤ acked was written to the backend connection. */
  acked: number;
  /** Names the session's current backend connection, as a decimal string (the wire number may exceed 2^53). */
  conn: string;
  /** False after tether stopped without a drain: messages sent on the previous backend connection above `acked` may or may not have been written. */
  exact: boolean;
}

/** What to do with messages in doubt (sent on a backend connection that tether lost without a drain, maybe written, maybe not). */
export type InDoubtPolicy = "report" | "resend" | "drop";

/** One upstream message, as reported by the `in_doubt` event. */
export interface UpstreamMessage {
  /** The seq it was last sent with. */
  seq: number;
  /** The payload as given to `send()` (binary as a copy). */
  data: string | Uint8Array;
}

export interface InDoubtReport {
  /** In send order. */
  messages: UpstreamMessage[];
  /** What the client did with them: `report` and `drop` rejected their `send()` promises (reasons `in_doubt` and `dropped`), `resend` sent them again. */
  policy: InDoubtPolicy;
  /** Why they are in doubt: tether lost the backend connection without a drain (`crash`), or the session itself is gone (`new_session`: a gap that started a new session, or `onReset`). */
  cause: "crash" | "new_session";
}

export interface ResetInfo {
  reason: "failed_resumes";
  /** Consecutive resume attempts that failed before a welcome. */
  failedAttempts: number;
  /** The offset of the abandoned session. */
  lastOffset: number;
}

/** The subset of the Web Storage API the client uses (sessionStorage fits). */
export interface TetherStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface TetherEvents {
  state: (state: State, previous: State) => void;
  welcome: (welcome: Welcome) => void;
  gap: (report: GapReport) => void;
  end: (code: number, reason: string) => void;
  reset: (info: ResetInfo) => void;
  draining: () => void;
  takeover: () => void;
  error: (error: Error) => void;
  /** Upstream only: messages that may or may not have reached the backend (see `onInDoubt`). */
  in_doubt: (report: InDoubtReport) => void;
}

export interface BackoffOptions {
  /** Cap of the first delay, ms. Default 500. */
  initialMs?: number;
  /** Largest cap, ms. Default 30000. */
  maxMs?: number;
  /** Growth of the cap per failed attempt. Default 2. */
  factor?: number;
}

/** What the client uses of a WebSocket: browsers', undici's and the `ws` package's all have it. */
export interface WebSocketLike {
  binaryType: string;
  readyState: number;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
}
// The instance type is left open: the DOM's and `ws`'s event types are not
// assignable to each other, and either must be accepted without a cast.
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => object;

export interface TetherClientOptions<U extends boolean = boolean> {
  /**
   * The upstream guarantee (docs/PROTOCOL.md §12): `send()` stamps each message
   * with a seq, keeps it until tether acks that it was written to the backend,
   * resends it after a reconnect, and returns a promise of that ack. Needs a
   * tether that supports it. Default false.
   */
  upstream?: U;
  /** Upstream only: messages sent and not yet acked, at most. `send()` waits for room beyond. Default 1000. */
  maxUnackedMessages?: number;
  /** Upstream only: payload bytes sent and not yet acked, at most (one larger message still goes, alone). Default 1 MiB. */
  maxUnackedBytes?: number;
  /**
   * Upstream only: the policy for messages in doubt after tether lost the
   * backend connection without a drain (kill -9) or lost the session. Always
   * emitted as the `in_doubt` event. `report` (default): reject their
   * promises with reason `in_doubt`; `resend`: send them again (the backend
   * may get them twice); `drop`: reject with reason `dropped`.
   */
  onInDoubt?: InDoubtPolicy;
  /** Called once per seq, in order. The offset advances only after it returns or its promise resolves. */
  onMessage?: (message: TetherMessage) => void | Promise<void>;
  onGap?: TetherEvents["gap"];
  onEnd?: TetherEvents["end"];
  onReset?: TetherEvents["reset"];
  onError?: TetherEvents["error"];
  /** Required where there is no global WebSocket (Node 20): pass `WebSocket` from the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** The application's subprotocols, offered on every connection (tether passes them to the backend). */
  protocols?: string | string[];
  /**
   * Where a resume sends the token. `protocol` (default): in
   * `Sec-WebSocket-Protocol`, as `tether.v1` and `tether.session.<token>`,
   * so it stays out of URLs and access logs. `query`: the `tether_session`
   * query parameter, for a path that drops unknown subprotocols; the token
   * then lands in URL logs (docs/PROTOCOL.md §8).
   */
  tokenIn?: "protocol" | "query";
  /** Must match tether's `stamp.mode`. Default `prefix`. */
  stampMode?: StampMode;
  /** tether's `stamp.json_field`. Default `seq`. */
  jsonField?: string;
  backoff?: BackoffOptions;
  /** Resume attempts in a row that may fail before the session is given up (onReset). Default 8. */
  maxFailedResumes?: number;
  /** Keeps token and offset across page reloads, e.g. `sessionStorage`. */
  storage?: TetherStorage;
  /** Key in `storage`. Default `tether:` + the URL. */
  storageKey?: string;
  /** Without `upstream`: messages `send()` may hold while disconnected; 0 makes `send()` refuse instead. Default 100. */
  sendQueueLimit?: number;
  /** Retry at once on the browser's `online` event and when the tab becomes visible. Default true. */
  wakeOnBrowserEvents?: boolean;
  /** Source of randomness for the jitter, in [0, 1). Default Math.random. */
  random?: () => number;
}

export interface TetherStats {
  /** Data frames that reached the client, duplicates included. */
  received: number;
  /** Data frames dropped because their seq was already processed. */
  duplicates: number;
  /** Data frames handed to onMessage and committed. */
  delivered: number;
  /** Connections that got a welcome. */
  connections: number;
}

export interface UpstreamStats {
  /** Messages admitted to the buffer and not yet acked (sent or about to be). */
  unackedMessages: number;
  /** Their payload bytes (UTF-8 for text). */
  unackedBytes: number;
  /** `send()` calls waiting for room in the buffer. */
  waiting: number;
  /** Highest seq tether acked in this session. */
  ackedSeq: number;
  /** Messages acked (their promises resolved). */
  acked: number;
  /** Transmissions of a message that had been sent before (after a reconnect). */
  resends: number;
  /** Messages found in doubt, whatever the policy. */
  inDoubt: number;
  /** Messages whose promise was rejected. */
  failed: number;
}

/** `send()`'s result: a promise of the ack with `upstream: true`, else whether the message was taken. */
export type SendResult<U extends boolean> = U extends true ? Promise<void> : boolean;
