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

export interface TetherClientOptions {
  /** Called once per seq, in order. The offset advances only after it returns or its promise resolves. */
  onMessage?: (message: TetherMessage) => void | Promise<void>;
  onGap?: TetherEvents["gap"];
  onEnd?: TetherEvents["end"];
  onReset?: TetherEvents["reset"];
  onError?: TetherEvents["error"];
  /** Required where there is no global WebSocket (Node 20): pass `WebSocket` from the `ws` package. */
  WebSocket?: WebSocketConstructor;
  protocols?: string | string[];
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
  /** Messages `send()` may hold while disconnected; 0 makes `send()` refuse instead. Default 100. */
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
