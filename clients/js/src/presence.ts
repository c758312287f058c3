/**
 * Presence (README "Presence"): the checks of `clientInfo`, the same as the server's
 * (`realtime/presence.py`), and what the client reads of PRESENCE answers and JOIN/LEAVE frames.
 */

import type { PresenceClient, PresenceData, PresenceEvent } from "./types.js";

/** Largest `clientInfo`, bytes of compact JSON (the server's limit). */
export const MAX_CLIENT_INFO_BYTES = 512;
/** Deepest nesting of objects and arrays in `clientInfo` (the object itself is 1). */
export const MAX_CLIENT_INFO_DEPTH = 3;

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * Check a `clientInfo` before it is sent with a LISTEN (the server refuses it otherwise).
 *
 * @returns `value`.
 * @throws TypeError not a JSON object; RangeError nested deeper than 3 levels, or longer than
 *   512 bytes as JSON.
 */
export function checkClientInfo(value: unknown): Record<string, unknown> {
  if (!isObject(value)) throw new TypeError("clientInfo must be a JSON object");
  const stack: Array<[unknown, number]> = [[value, 1]];
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    const [node, depth] = item;
    if (node === null || typeof node !== "object") continue;
    if (depth > MAX_CLIENT_INFO_DEPTH) {
      throw new RangeError(`clientInfo is nested deeper than ${MAX_CLIENT_INFO_DEPTH} levels`);
    }
    for (const child of Object.values(node)) stack.push([child, depth + 1]);
  }
  if (new TextEncoder().encode(JSON.stringify(value)).length > MAX_CLIENT_INFO_BYTES) {
    throw new RangeError(`clientInfo is longer than ${MAX_CLIENT_INFO_BYTES} bytes as JSON`);
  }
  return value;
}

/** One presence entry, or `undefined` when `value` is not one. */
function presenceClient(value: unknown): PresenceClient | undefined {
  if (!isObject(value) || typeof value["client"] !== "string") return undefined;
  const user = typeof value["user"] === "string" ? value["user"] : null;
  return { user, client: value["client"], info: isObject(value["info"]) ? value["info"] : {} };
}

/** A JOIN or LEAVE frame's `data` as an event, or `undefined` when malformed. */
export function presenceEvent(data: unknown): PresenceEvent | undefined {
  const entry = presenceClient(data);
  if (entry === undefined || !isObject(data) || typeof data["topic"] !== "string") return undefined;
  return { topic: data["topic"], ...entry };
}

/** A PRESENCE RESPONSE's `data`, or `undefined` when it lacks the counts. */
export function presenceData(data: unknown): PresenceData | undefined {
  if (!isObject(data) || !Number.isInteger(data["connections"]) || !Number.isInteger(data["users"])) return undefined;
  const out: PresenceData = { connections: data["connections"] as number, users: data["users"] as number };
  if (Array.isArray(data["clients"])) {
    out.clients = data["clients"].map(presenceClient).filter((c): c is PresenceClient => c !== undefined);
  }
  return out;
}
