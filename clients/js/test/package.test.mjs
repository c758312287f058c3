// The package as published: npm pack's file list, and the browser bundle.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as bundle from "../dist/realtime-client.js";
import * as index from "../dist/index.js";

const root = new URL("..", import.meta.url);

test("npm pack makes a tarball of dist/, the README and package.json", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8" });
  const [info] = JSON.parse(out);
  const files = info.files.map((f) => f.path).sort();
  for (const f of ["package.json", "README.md", "dist/index.js", "dist/index.d.ts", "dist/client.d.ts", "dist/realtime-client.js"]) {
    assert.ok(files.includes(f), `${f} missing from ${files}`);
  }
  assert.ok(files.every((f) => !f.startsWith("src/") && !f.startsWith("test/")), String(files));
  assert.match(info.filename, /^realtime-pubsub-client-0\.1\.0\.tgz$/);
  const pkg = JSON.parse(readFileSync(new URL("package.json", root), "utf8"));
  assert.deepEqual(Object.keys(pkg.dependencies ?? {}), []);
});

test("the one-file bundle exports what the package exports", () => {
  assert.deepEqual(Object.keys(bundle).sort(), Object.keys(index).sort());
  assert.equal(bundle.VERSION, index.VERSION);
  assert.equal(typeof bundle.RealtimeClient, "function");
});

test("the console's copy of the bundle is the build's (make js-static refreshes it)", () => {
  const built = readFileSync(new URL("dist/realtime-client.js", root), "utf8");
  const served = readFileSync(new URL("../../http_api/static/realtime-client.js", root), "utf8");
  assert.ok(served === built, "http_api/static/realtime-client.js differs from a fresh build: run `make js-static`");
});
