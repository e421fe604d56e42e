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
    const set = this.#listeners.get(type);
    // Like Node's EventEmitter, an error nobody listens to must not vanish;
    // logging it keeps the client running, which throwing would not.
    if (type === "error" && !set?.size) console.error("@tether/client:", ...args);
    for (const fn of [...(set ?? [])]) {
      try {
        (fn as (...a: Parameters<Events[K]>) => void)(...args);
      } catch (err) {
        // One listener's bug must not break the client's state machine.
        if (type !== "error") this.emit("error" as K, ...([err] as Parameters<Events[K]>));
      }
    }
  }
}
