/**
 * WS tokens: reading a JWT's claims without verifying them (to schedule the refresh), and
 * the default provider, `POST /auth/ws` with the page's credentials.
 */

import { TokenError } from "./errors.js";

/** A token and, if known, its lifetime in seconds (`expires_in` of `/auth/ws`). */
export interface TokenInfo {
  token: string;
  expiresIn?: number | undefined;
}

/** Returns a WS token (a JWT), optionally with its lifetime; `null` for no token (public topics only). */
export type TokenProvider = () => Promise<string | TokenInfo | null>;

/** A JWT's claims, read without verification (scheduling only); `{}` if unreadable. */
export function tokenClaims(token: string): Record<string, unknown> {
  const part = token.split(".")[1];
  if (part === undefined) return {};
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (part.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === "object" && !Array.isArray(claims)
      ? (claims as Record<string, unknown>)
      : {};
  } catch {
    return {};
  }
}

function finite(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/**
 * A token's lifetime in seconds, from the token itself and never from this machine's clock:
 * the shorter of `expiresIn` (from `/auth/ws`) and the claims' `exp - iat` (`exp` is whole
 * seconds, so `expires_in` alone can be up to a second long); `undefined` when neither is known.
 */
export function tokenLifetime(token: string, expiresIn?: number): number | undefined {
  const claims = tokenClaims(token);
  const exp = finite(claims["exp"]);
  const iat = finite(claims["iat"]);
  const known = [finite(expiresIn), exp !== undefined && iat !== undefined ? exp - iat : undefined].filter(
    (x): x is number => x !== undefined,
  );
  return known.length ? Math.min(...known) : undefined;
}

/**
 * The default token provider: `POST {baseUrl}/auth/ws` with `credentials: "include"`, so a
 * page whose user is logged in (a session cookie) gets a token for that user.
 *
 * @throws TokenError on 401 or 403 (retrying will not help); a plain Error on other failures.
 */
export function authWsProvider(baseUrl: string, init: RequestInit = {}): TokenProvider {
  return async () => {
    const resp = await fetch(`${baseUrl}/auth/ws`, { method: "POST", credentials: "include", ...init });
    if (resp.status === 401 || resp.status === 403) {
      throw new TokenError(`/auth/ws answered ${resp.status}: ${(await resp.text()).slice(0, 300)}`, resp.status);
    }
    if (!resp.ok) throw new Error(`/auth/ws answered ${resp.status}`);
    const body = (await resp.json()) as { token?: unknown; expires_in?: unknown };
    if (typeof body.token !== "string") throw new Error("/auth/ws sent no token");
    return { token: body.token, expiresIn: finite(body.expires_in) };
  };
}
