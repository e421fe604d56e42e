export { TetherClient } from "./client.js";
export { TetherProtocolError, parseFrame } from "./frames.js";
export { TetherUpstreamError, stampUpstream, type UpstreamFailure } from "./upstream.js";
export { backoffDelay } from "./backoff.js";
export type * from "./types.js";
