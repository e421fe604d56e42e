import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import puppeteer from "puppeteer-core";

export const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

/** Serves the test page and the bundled library on 127.0.0.1. */
export async function servePage() {
  const files = {
    "/": ["text/html", readFileSync(new URL("../browser/page.html", import.meta.url))],
    "/tether-client.min.js": ["text/javascript", readFileSync(new URL("../../dist/tether-client.min.js", import.meta.url))],
  };
  const server = createServer((req, res) => {
    const f = files[new URL(req.url, "http://x").pathname];
    if (!f) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": f[0], "cache-control": "no-store" }).end(f[1]);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

export function launch() {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container: no user namespaces for the sandbox.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  });
}

/**
 * Opens the page with bindings through which it reports to the harness.
 * `onReport(seq, data)` and `onState(state)` run in Node.
 */
export async function openPage(browser, url, { onReport, onState = () => {}, onGap = () => {}, onError = () => {}, onEvent = () => {} }) {
  const page = await browser.newPage();
  // exposeFunction bindings survive reloads, so a reloaded page reports to the same harness.
  await page.exposeFunction("harnessReport", onReport);
  await page.exposeFunction("harnessState", onState);
  await page.exposeFunction("harnessGap", onGap);
  await page.exposeFunction("harnessError", onError);
  await page.exposeFunction("harnessEvent", onEvent);
  await page.goto(url);
  return page;
}

/** A small seeded PRNG (mulberry32), so a failing run can be replayed with its seed. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
