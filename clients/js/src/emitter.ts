/** A small typed event emitter (`on`, `off`, `once`), the same in browsers and Node. */

/** A listener of event `K` of map `M`. */
export type Listener<M, K extends keyof M> = (event: M[K]) => void;

/** Emits the events of map `M` (event name -> payload) to listeners added with `on`. */
export class Emitter<M> {
  private readonly listeners = new Map<keyof M, Set<(event: never) => void>>();

  /** Call `fn` on every `event`; returns a function that removes it. */
  on<K extends keyof M>(event: K, fn: Listener<M, K>): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn as (event: never) => void);
    return () => this.off(event, fn);
  }

  /** Call `fn` on the next `event` only; returns a function that removes it. */
  once<K extends keyof M>(event: K, fn: Listener<M, K>): () => void {
    const off = this.on(event, (payload) => {
      off();
      fn(payload);
    });
    return off;
  }

  /** Remove a listener added with `on`. */
  off<K extends keyof M>(event: K, fn: Listener<M, K>): void {
    this.listeners.get(event)?.delete(fn as (event: never) => void);
  }

  /** Call every listener of `event`; a listener that throws is reported and does not stop the others. */
  protected emit<K extends keyof M>(event: K, payload: M[K]): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        (fn as Listener<M, K>)(payload);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
}
