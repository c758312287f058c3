/** Reconnect delays: capped exponential backoff with full jitter. */

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry): a random time in
 * `[0, min(maxMs, initialMs * 2 ** attempt))` ("full jitter": reconnect storms spread over
 * the whole window).
 *
 * @param attempt failed attempts so far.
 * @param initialMs the first window, milliseconds.
 * @param maxMs the largest window, milliseconds.
 * @param random a source of numbers in [0, 1) (injected by tests).
 */
export function backoffDelay(
  attempt: number,
  initialMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const window = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return window * random();
}
