/**
 * Where the client is in each topic's stream (topics with history).
 *
 * Every MESSAGE on a topic with history carries `offset` and `epoch`. The client keeps the
 * last pair per topic, sends it as `since` when it LISTENs again (after a reconnect) so the
 * server first sends what was missed, and drops a publication it delivered already (the same
 * epoch, an offset not past the known one). The model is `realtime/client_positions.py`.
 */

/** A place in a topic's stream. */
export interface Position {
  /** 1 for the topic's first publication, +1 per publication. */
  offset: number;
  /** The stream's epoch: changes when the topic's history was lost or reset. */
  epoch: string;
}

const MAX_OFFSET = 2 ** 53 - 1;
const MAX_EPOCH_LENGTH = 64;

/** A `since` entry checked. @throws RangeError out of range (offset 0 to 2**53 - 1, epoch 1 to 64 characters). */
export function checkPosition(topic: string, value: Position): Position {
  const { offset, epoch } = value;
  if (!Number.isInteger(offset) || offset < 0 || offset > MAX_OFFSET) {
    throw new RangeError(`since ${topic}: the offset must be an integer from 0 to ${MAX_OFFSET}`);
  }
  if (typeof epoch !== "string" || epoch.length === 0 || epoch.length > MAX_EPOCH_LENGTH) {
    throw new RangeError(`since ${topic}: the epoch must be a string of 1 to ${MAX_EPOCH_LENGTH} characters`);
  }
  return { offset, epoch };
}

/** The last position per topic, the topics after a GAP, and the duplicates dropped. */
export class Positions {
  private readonly known = new Map<string, Position>();
  private readonly afterGap = new Set<string>();
  /** Publications `accept` refused as already delivered. */
  duplicatesDropped = 0;

  constructor(since: Readonly<Record<string, Position>> = {}) {
    this.set(since);
  }

  /** Start these topics from these positions. @throws RangeError for one out of range. */
  set(since: Readonly<Record<string, Position>>): void {
    const checked = Object.entries(since).map(([topic, p]) => [topic, checkPosition(topic, p)] as const);
    for (const [topic, position] of checked) {
      this.known.set(topic, position);
      this.afterGap.delete(topic);
    }
  }

  /** A copy of the positions, `{topic: {offset, epoch}}`. */
  snapshot(): Record<string, Position> {
    return Object.fromEntries([...this.known].map(([topic, p]) => [topic, { ...p }]));
  }

  /** LISTEN's `since` for those of `topics` whose position is known (`undefined` if none). */
  since(topics: Iterable<string>): Record<string, Position> | undefined {
    const out: Record<string, Position> = {};
    let any = false;
    for (const topic of topics) {
      const p = this.known.get(topic);
      if (p !== undefined) {
        out[topic] = { offset: p.offset, epoch: p.epoch };
        any = true;
      }
    }
    return any ? out : undefined;
  }

  /**
   * A GAP for these topics: the server sends only live publications after it, so the next
   * one is new whatever its offset. Until it comes the position stays (a reconnect sends it).
   */
  gap(topics: Iterable<string>): void {
    for (const topic of topics) this.afterGap.add(topic);
  }

  /**
   * Whether a publication at `position` is new; if so (and `track`) it becomes the topic's
   * position. A duplicate (same epoch, offset not past the known one) is counted. Another
   * epoch is always new (the history was reset); so is the first after a GAP.
   */
  accept(topic: string, position: Position, track = true): boolean {
    const known = this.known.get(topic);
    if (this.afterGap.has(topic)) {
      this.afterGap.delete(topic);
    } else if (known !== undefined && known.epoch === position.epoch && position.offset <= known.offset) {
      this.duplicatesDropped += 1;
      return false;
    }
    if (track) this.known.set(topic, { offset: position.offset, epoch: position.epoch });
    return true;
  }

  /** Drop these topics' positions (UNLISTEN, AUTH_REVOKED, a MESSAGE without offset). */
  forget(topics: Iterable<string>): void {
    for (const topic of topics) {
      this.known.delete(topic);
      this.afterGap.delete(topic);
    }
  }
}
