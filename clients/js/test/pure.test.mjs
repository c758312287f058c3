// The pure parts: backoff, close codes, positions, token lifetimes, the emitter.
import assert from "node:assert/strict";
import { test } from "node:test";
import { readFileSync } from "node:fs";
import {
  CLOSE_CODES,
  Emitter,
  Positions,
  VERSION,
  backoffDelay,
  shouldReconnect,
  tokenClaims,
  tokenLifetime,
} from "../dist/index.js";
import { jwt } from "./helpers.mjs";

test("backoff: full jitter within a window that doubles up to the cap", () => {
  for (let attempt = 0; attempt < 40; attempt += 1) {
    const window = Math.min(120_000, 1000 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 1000, 120_000, () => 0), 0);
    const high = backoffDelay(attempt, 1000, 120_000, () => 0.999999);
    assert.ok(high < window && high > window * 0.99, `attempt ${attempt}: ${high} vs ${window}`);
    const any = backoffDelay(attempt, 1000, 120_000);
    assert.ok(any >= 0 && any < window);
  }
  assert.equal(backoffDelay(0, 1000, 120_000, () => 0.5), 500);
  assert.equal(backoffDelay(3, 1000, 120_000, () => 0.5), 4000);
  assert.equal(backoffDelay(1e9, 1000, 5000, () => 0.5), 2500);
});

test("close codes: the table decides, unknown codes retry", () => {
  for (const code of [1002, 1007, 1009]) assert.equal(shouldReconnect(code), false, String(code));
  for (const code of [1001, 1011, 4001, 4002, 4003, 4008]) assert.equal(shouldReconnect(code), true, String(code));
  for (const code of [1000, 1006, 4000, 4999, undefined]) assert.equal(shouldReconnect(code), true, String(code));
  assert.equal(CLOSE_CODES[4008].reason, "slow consumer");
  assert.ok(Object.isFrozen(CLOSE_CODES));
});

test("positions: duplicates dropped, another epoch and the first after a GAP are new", () => {
  const p = new Positions({ a: { offset: 5, epoch: "e1" } });
  assert.equal(p.accept("a", { offset: 5, epoch: "e1" }), false);
  assert.equal(p.accept("a", { offset: 3, epoch: "e1" }), false);
  assert.equal(p.accept("a", { offset: 6, epoch: "e1" }), true);
  assert.equal(p.duplicatesDropped, 2);
  assert.deepEqual(p.since(["a", "b"]), { a: { offset: 6, epoch: "e1" } });
  assert.equal(p.since(["b"]), undefined);
  assert.equal(p.accept("a", { offset: 1, epoch: "e2" }), true); // history reset
  p.gap(["a"]);
  assert.deepEqual(p.snapshot(), { a: { offset: 1, epoch: "e2" } }); // kept until the next MESSAGE
  assert.equal(p.accept("a", { offset: 1, epoch: "e2" }), true); // after a GAP: new whatever its offset
  assert.equal(p.accept("a", { offset: 1, epoch: "e2" }), false);
  assert.equal(p.accept("b", { offset: 9, epoch: "x" }, false), true);
  assert.deepEqual(Object.keys(p.snapshot()), ["a"]); // not tracked
  p.forget(["a"]);
  assert.deepEqual(p.snapshot(), {});
  assert.throws(() => new Positions({ a: { offset: -1, epoch: "e" } }), RangeError);
  assert.throws(() => new Positions({ a: { offset: 1.5, epoch: "e" } }), RangeError);
  assert.throws(() => new Positions({ a: { offset: 1, epoch: "" } }), RangeError);
  assert.throws(() => new Positions({ a: { offset: 1, epoch: "e".repeat(65) } }), RangeError);
});

test("token lifetime: the shorter of expires_in and exp - iat, never the local clock", () => {
  const token = jwt({ sub: "7", iat: 1000, exp: 1600 }); // issued long ago: irrelevant
  assert.equal(tokenLifetime(token), 600);
  assert.equal(tokenLifetime(token, 3600), 600);
  assert.equal(tokenLifetime(token, 599.5), 599.5);
  assert.equal(tokenLifetime(jwt({ exp: 1600 })), undefined);
  assert.equal(tokenLifetime(jwt({ exp: 1600 }), 30), 30);
  assert.equal(tokenLifetime("not a jwt"), undefined);
  assert.deepEqual(tokenClaims("a.!!!.c"), {});
  assert.deepEqual(tokenClaims(jwt({ sub: "é" })), { sub: "é" });
});

test("emitter: on, once, off; a throwing listener does not stop the others", async () => {
  class E extends Emitter {
    fire(v) {
      this.emit("x", v);
    }
  }
  const e = new E();
  const got = [];
  const off = e.on("x", (v) => got.push(["on", v]));
  e.once("x", (v) => got.push(["once", v]));
  e.fire(1);
  off();
  e.fire(2);
  assert.deepEqual(got, [["on", 1], ["once", 1]]);
});

test("VERSION is package.json's", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(VERSION, pkg.version);
});
