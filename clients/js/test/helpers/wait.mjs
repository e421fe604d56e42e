import { setTimeout as delay } from "node:timers/promises";

/** Resolves with the arguments of the next `type` event whose arguments satisfy `pred`. */
export function nextEvent(client, type, pred = () => true) {
  return new Promise((resolve) => {
    const off = client.on(type, (...args) => {
      if (!pred(...args)) return;
      off();
      resolve(args);
    });
  });
}

/** Resolves once the client is in `state` (at once if it already is). */
export function stateIs(client, state) {
  if (client.state === state) return Promise.resolve();
  return nextEvent(client, "state", (s) => s === state);
}

/**
 * Re-checks `cond` until it holds. Only for facts that have no event to wait
 * on (a counter in tether's /metrics); the test's own timeout bounds it.
 */
export async function until(cond, what) {
  for (let i = 0; ; i++) {
    if (await cond()) return;
    if (i % 500 === 499) console.error(`still waiting for ${what}`);
    await delay(10);
  }
}

export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
