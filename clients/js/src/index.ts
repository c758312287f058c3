/**
 * The realtime server's client for browsers and Node >= 20: `RealtimeClient` and its types.
 *
 * @packageDocumentation
 */

export { RealtimeClient } from "./client.js";
export { ClosedError, DisconnectedError, ListenError, PresenceError, RealtimeError, TokenError } from "./errors.js";
export type { ListenErrorCode } from "./errors.js";
export { CLOSE_CODES, shouldReconnect } from "./closeCodes.js";
export type { CloseCodeRow } from "./closeCodes.js";
export { backoffDelay } from "./backoff.js";
export { Positions, checkPosition } from "./positions.js";
export type { Position } from "./positions.js";
export { MAX_CLIENT_INFO_BYTES, MAX_CLIENT_INFO_DEPTH, checkClientInfo } from "./presence.js";
export { authWsProvider, tokenClaims, tokenLifetime } from "./tokens.js";
export type { TokenInfo, TokenProvider } from "./tokens.js";
export { Emitter } from "./emitter.js";
export type { Listener } from "./emitter.js";
export type {
  Clock,
  ListenOptions,
  PresenceClient,
  PresenceData,
  PresenceEvent,
  RealtimeClientOptions,
  RealtimeEvents,
  RealtimeMessage,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
export const VERSION = "0.1.0";
