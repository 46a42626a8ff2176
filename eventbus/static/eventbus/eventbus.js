/**
 * eventbus.js: the browser client for eventbus's WebSocket stream (docs/protocol.md).
 * A dependency-free ES module:
 *
 *   import { EventBusClient } from "{% static 'eventbus/eventbus.js' %}";
 *
 *   const bus = new EventBusClient("/ws/events/", {
 *     onStatus: (state, detail) => {},  // "connecting", "open", "reconnecting" ({delay, code}),
 *                                       // "signed_out" (close code 4401), "closed"
 *     onReset: (channel, reason, {epoch, position}) => {}, // the gap cannot be filled: reload
 *                                       // your state; events after `position` follow
 *     onError: (frame) => {},           // error frames; also {type: "unsubscribed", reason:
 *                                       // "forbidden"} when access ends while connected
 *   });
 *   const stop = bus.subscribe(channel, { position: null, epoch: null, types: ["ticket.*"] },
 *                              (event, channel, position) => {});
 *   // Presence (the server's PRESENCE hook on): who else watches the channel.
 *   bus.subscribe(channel, { presence: {
 *     onSnapshot: (users, channel) => {}, // everyone present: [{key, info, connections}]
 *     onJoin: (user, channel) => {},      // {key, info}: a user's first connection came
 *     onLeave: (user, channel) => {},     // {key, info}: its last connection went
 *   } }, onEvent);
 *   bus.presence(channel);   // who is present now, as the frames said: [{key, info}]
 *   bus.connect();
 *   stop();      // the same as bus.unsubscribe(channel)
 *   bus.close();
 *
 * Every event frame carries its position on its channel's stream. Lost connections come
 * back with exponential backoff and jitter; each channel is then subscribed again with
 * the last position (and epoch) the server gave, so the server replays exactly what
 * came after it, in order. An event at or before the position reached is dropped, so
 * each reaches `onEvent` once; events kept out of the log have no position and are
 * deduplicated by id (the last `dedupeSize` per channel). `bus.position(channel)` tells
 * where a channel stands, to store and pass back as `{position, epoch}` on a later page. A ping every `pingInterval` ms keeps the
 * connection alive, and one that stays silent for a whole interval is replaced.
 * Close code 4401 (signed out) stops the client until connect() is called again.
 *
 * TypeScript types are in eventbus.d.ts beside this file: `new EventBusClient<EventPayloads>()`
 * with the catalog's types (`manage.py eventbus_catalog --format typescript`) narrows each
 * event's payload by its type.
 */

const SIGNED_OUT = 4401;

const DEFAULTS = {
  minDelay: 500, // ms before the first reconnect; doubles on each failed attempt
  maxDelay: 30000, // ms, the longest wait between attempts
  pingInterval: 25000, // ms
  dedupeSize: 1000, // event ids remembered per channel
};

export class EventBusClient {
  constructor(url = "/ws/events/", options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.status = "idle";
    this._channels = new Map(); // channel -> {since, types, onEvent, seen}
    this._socket = null;
    this._attempts = 0;
    this._stopped = true;
    this._retryTimer = null;
    this._pingTimer = null;
    this._heard = false;
  }

  /** Open the connection (a no-op when it is open or opening). */
  connect() {
    this._stopped = false;
    clearTimeout(this._retryTimer);
    if (this._socket === null) this._open();
    return this;
  }

  /**
   * Receive the events of `channel` as `onEvent(event, channel, position)`; return a
   * function that unsubscribes. `position` (with its `epoch`): where the caller stands on
   * the channel, to replay what came after it; `since` (an event id) is the older way.
   * `types`: shell-style patterns of the event types wanted (null: all).
   */
  subscribe(
    channel,
    { position = null, epoch = null, since = null, types = null, presence = null } = {},
    onEvent = () => {},
  ) {
    const previous = this._channels.get(channel);
    const entry = {
      position: position ?? previous?.position ?? null,
      epoch: epoch ?? previous?.epoch ?? null,
      since: position === null ? since : null,
      types,
      onEvent,
      seen: previous?.seen ?? new Set(),
      // Presence callbacks (null: not asked for), and who is present: key -> user.
      presence,
      present: new Map(),
    };
    this._channels.set(channel, entry);
    this._sendSubscribe(channel, entry);
    return () => {
      if (this._channels.get(channel) === entry) this.unsubscribe(channel);
    };
  }

  unsubscribe(channel) {
    if (this._channels.delete(channel)) this._send({ action: "unsubscribe", channel });
  }

  /** Where `channel` stands: `{position, epoch}` (null before the server said). */
  position(channel) {
    const entry = this._channels.get(channel);
    return entry === undefined ? null : { position: entry.position, epoch: entry.epoch };
  }

  /**
   * Who is present on `channel` as the server last said: `[{key, info, connections?}]`
   * (`connections` comes with the snapshot only); empty without `presence` on subscribe.
   */
  presence(channel) {
    const entry = this._channels.get(channel);
    return entry === undefined ? [] : [...entry.present.values()];
  }

  /** Close the connection for good; subscriptions are kept for a later connect(). */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    const socket = this._socket;
    this._detach();
    if (socket !== null) socket.close(1000);
    this._setStatus("closed");
  }

  _open() {
    const socket = new WebSocket(websocketUrl(this.url));
    this._socket = socket;
    this._setStatus("connecting");
    socket.onopen = () => {
      this._setStatus("open");
      for (const [channel, entry] of this._channels) this._sendSubscribe(channel, entry);
      this._startPing();
    };
    socket.onmessage = (message) => this._receive(message.data);
    socket.onclose = (close) => this._closed(close.code);
  }

  _closed(code) {
    this._detach();
    if (this._stopped) return;
    if (code === SIGNED_OUT) {
      // Retrying cannot help until the user signs in again.
      this._stopped = true;
      this._setStatus("signed_out", { code });
      return;
    }
    const { minDelay, maxDelay } = this.options;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** this._attempts);
    // Jitter, so that the tabs a server restart cut off do not all come back at once.
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this._attempts += 1;
    this._setStatus("reconnecting", { delay, code });
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _detach() {
    clearInterval(this._pingTimer);
    if (this._socket !== null) {
      this._socket.onopen = this._socket.onmessage = this._socket.onclose = null;
      this._socket = null;
    }
  }

  _startPing() {
    this._heard = true;
    this._pingTimer = setInterval(() => {
      if (!this._heard) {
        // Not even the last ping's pong came back: the link is dead, though the browser
        // may take minutes to notice. Drop the socket and reconnect now.
        const socket = this._socket;
        this._closed(undefined);
        socket.close();
        return;
      }
      this._heard = false;
      this._send({ action: "ping" });
    }, this.options.pingInterval);
  }

  _receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    this._heard = true;
    this._attempts = 0; // the server answers: the next outage starts from minDelay again
    const entry = this._channels.get(frame.channel);
    if (frame.type === "event") {
      if (entry !== undefined) this._deliver(frame.channel, entry, frame);
    } else if (frame.type === "presence") {
      if (entry !== undefined && entry.presence !== null) this._presence(frame.channel, entry, frame);
    } else if (frame.type === "subscribed") {
      if (entry !== undefined) {
        entry.since = null; // positions from now on
        entry.epoch = frame.epoch;
        if (entry.position === null || entry.position < frame.position) {
          entry.position = frame.position;
        }
      }
    } else if (frame.type === "reset") {
      if (entry !== undefined) {
        entry.since = null;
        entry.position = frame.position;
        entry.epoch = frame.epoch;
        this.options.onReset?.(frame.channel, frame.reason, {
          epoch: frame.epoch,
          position: frame.position,
        });
      }
    } else if (frame.type === "unsubscribed") {
      if (frame.reason === "forbidden" && entry !== undefined) {
        this._channels.delete(frame.channel);
        this.options.onError?.(frame);
      }
    } else if (frame.type === "error") {
      if (frame.action === "subscribe" && frame.code === "unavailable" && entry !== undefined) {
        // The server could not reach Redis to join the channel: ask again shortly.
        setTimeout(() => {
          if (this._channels.get(frame.channel) === entry) this._sendSubscribe(frame.channel, entry);
        }, this.options.minDelay);
      } else if (frame.code === "no_presence" || frame.code === "presence_unavailable") {
        // Subscribed all the same, without presence.
      } else if (frame.action === "subscribe") {
        this._channels.delete(frame.channel); // a refused subscribe is not retried
      }
      this.options.onError?.(frame);
    }
  }

  _presence(channel, entry, frame) {
    const { present, presence } = entry;
    if (frame.kind === "snapshot") {
      // After a reconnect too: the server's snapshot replaces what we had.
      present.clear();
      for (const user of frame.users) present.set(user.key, user);
      presence.onSnapshot?.([...present.values()], channel);
    } else if (frame.kind === "join") {
      present.set(frame.user.key, frame.user);
      presence.onJoin?.(frame.user, channel);
    } else if (frame.kind === "leave") {
      present.delete(frame.user.key);
      presence.onLeave?.(frame.user, channel);
    }
  }

  _deliver(channel, entry, frame) {
    const { event, position } = frame;
    if (position !== undefined) {
      if (entry.position !== null && position <= entry.position) return; // had it already
      entry.position = position;
    } else {
      // Not in the log, so no position: dedupe by id.
      if (entry.seen.has(event.id)) return;
      entry.seen.add(event.id);
      if (entry.seen.size > this.options.dedupeSize) {
        entry.seen.delete(entry.seen.values().next().value); // the oldest: Sets keep order
      }
    }
    entry.onEvent(event, channel, position ?? null);
  }

  _sendSubscribe(channel, entry) {
    const frame = { action: "subscribe", channel, types: entry.types };
    if (entry.presence !== null) frame.presence = true;
    if (entry.position !== null) {
      frame.position = entry.position;
      if (entry.epoch) frame.epoch = entry.epoch;
    } else if (entry.since !== null) {
      frame.since = entry.since;
    }
    this._send(frame);
  }

  _send(frame) {
    if (this._socket?.readyState === WebSocket.OPEN) this._socket.send(JSON.stringify(frame));
  }

  _setStatus(state, detail = {}) {
    this.status = state;
    this.options.onStatus?.(state, detail);
  }
}

/** `url` made absolute against the page, with ws: or wss: to match http: or https:. */
function websocketUrl(url) {
  const absolute = new URL(url, window.location.href);
  if (absolute.protocol === "http:") absolute.protocol = "ws:";
  if (absolute.protocol === "https:") absolute.protocol = "wss:";
  return absolute.href;
}
