import type { BackoffOptions } from "./types.js";

/**
 * Full jitter (a uniform draw below an exponentially growing cap): clients
 * dropped together by one network event do not come back together.
 * `attempt` counts from 0.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = opts.initialMs ?? 500;
  const max = opts.maxMs ?? 30_000;
  const factor = opts.factor ?? 2;
  const cap = Math.min(max, initial * Math.pow(factor, Math.min(attempt, 64)));
  return Math.floor(random() * cap);
}
