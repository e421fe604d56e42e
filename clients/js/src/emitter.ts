type Listener = (...args: never[]) => void;

/** A typed, dependency-free event emitter (EventTarget cannot type its payloads). */
export class Emitter<Events extends { [K in keyof Events]: Listener }> {
  #listeners = new Map<keyof Events, Set<Listener>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: Events[K]): () => void {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  off<K extends keyof Events>(type: K, listener: Events[K]): void {
    this.#listeners.get(type)?.delete(listener);
  }

  protected emit<K extends keyof Events>(type: K, ...args: Parameters<Events[K]>): void {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) {
      try {
        (fn as (...a: Parameters<Events[K]>) => void)(...args);
      } catch (err) {
        // One listener's bug must not break the client's state machine.
        if (type !== "error") this.emit("error" as K, ...([err] as Parameters<Events[K]>));
      }
    }
  }
}
