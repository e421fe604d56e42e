import type { StampMode } from "./types.js";

export type Frame =
  | { kind: "control"; msg: { type: string; [k: string]: unknown } }
  | { kind: "data"; seq: number; data: string | Uint8Array };

export class TetherProtocolError extends Error {
  override name = "TetherProtocolError";
}

/** Reads tether's stamp off one WebSocket message (docs/PROTOCOL.md §4, §7). */
export function parseFrame(raw: unknown, mode: StampMode, jsonField: string): Frame {
  if (typeof raw === "string") return parseText(raw, mode, jsonField);
  let bytes: Uint8Array;
  if (raw instanceof ArrayBuffer) bytes = new Uint8Array(raw);
  else if (ArrayBuffer.isView(raw)) bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
  else throw new TetherProtocolError("unsupported message type (Blob? binaryType must be arraybuffer)");
  if (bytes.byteLength < 8) throw new TetherProtocolError("binary frame shorter than its 8-byte stamp");
  const view = new DataView(bytes.buffer, bytes.byteOffset, 8);
  const hi = view.getUint32(0);
  // Seqs past 2^53 would need BigInt everywhere; a session never gets there.
  if (hi >= 0x200000) throw new TetherProtocolError("binary seq beyond 2^53");
  const seq = hi * 0x100000000 + view.getUint32(4);
  return { kind: "data", seq, data: bytes.subarray(8) };
}

function parseText(s: string, mode: StampMode, jsonField: string): Frame {
  if (s.charCodeAt(0) === 35 /* # */) {
    let msg: unknown;
    try {
      msg = JSON.parse(s.slice(1));
    } catch {
      throw new TetherProtocolError("control frame is not JSON");
    }
    if (!msg || typeof msg !== "object" || typeof (msg as { type?: unknown }).type !== "string") {
      throw new TetherProtocolError("control frame without a type");
    }
    return { kind: "control", msg: msg as { type: string } };
  }
  if (mode === "json" && s.charCodeAt(0) === 123 /* { */) return parseJsonStamp(s, jsonField);
  const colon = s.indexOf(":");
  const seq = colon > 0 ? readSeq(s, 0, colon) : NaN;
  if (Number.isNaN(seq)) {
    throw new TetherProtocolError(mode === "prefix" && s.startsWith("{") ? "JSON frame in prefix mode: is tether's stamp.mode json?" : "text frame without a seq stamp");
  }
  return { kind: "data", seq, data: s.slice(colon + 1) };
}

// tether inserts `"field":N` right after the `{` with no whitespace, so the
// original payload comes back by cutting that member out, without a parse.
function parseJsonStamp(s: string, jsonField: string): Frame {
  const head = "{" + JSON.stringify(jsonField) + ":";
  if (!s.startsWith(head)) throw new TetherProtocolError("JSON frame without the stamp field first");
  let end = head.length;
  while (end < s.length && s.charCodeAt(end) >= 48 && s.charCodeAt(end) <= 57) end++;
  const seq = readSeq(s, head.length, end);
  const next = s[end];
  if (Number.isNaN(seq) || (next !== "," && next !== "}")) throw new TetherProtocolError("malformed JSON stamp");
  return { kind: "data", seq, data: "{" + s.slice(next === "," ? end + 1 : end) };
}

function readSeq(s: string, from: number, to: number): number {
  if (to <= from || to - from > 16) return NaN;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return NaN;
  }
  return Number(s.slice(from, to));
}
