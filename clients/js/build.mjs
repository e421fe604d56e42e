// ESM for bundlers and Node (dist/index.js), one minified file for a
// <script type="module"> (dist/tether-client.min.js), and the .d.ts from tsc.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
const common = { entryPoints: ["src/index.ts"], bundle: true, format: "esm", target: "es2022", platform: "neutral", logLevel: "warning" };
await build({ ...common, outfile: "dist/index.js", sourcemap: true });
await build({ ...common, outfile: "dist/tether-client.min.js", minify: true });
execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "."], { stdio: "inherit" });
