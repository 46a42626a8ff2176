/**
 * Types for eventbus.js, the browser client of eventbus's WebSocket stream
 * (docs/protocol.md). TypeScript finds them next to eventbus.js.
 *
 * The client is generic over an event map, a type with one property per event type
 * holding its payload. Generate yours from the catalog:
 *
 *   python manage.py eventbus_catalog --format typescript --output static/catalog.d.ts
 *
 *   import { EventBusClient } from "./eventbus.js";
 *   import type { EventPayloads } from "./catalog";
 *
 *   const bus = new EventBusClient<EventPayloads>("/ws/events/");
 *   bus.subscribe(channel, { types: ["ticket.*"] }, (event) => {
 *     // event: only the ticket.* events
 *     if (event.type === "ticket.created") console.log(event.payload.title);
 *   });
 *
 * Without a map, every event's payload is `{ [field: string]: unknown }`.
 */

/** A project or actor key as the JSON holds it: a UUID's text, an integer or a string. */
export type Key = string | number;

export type ActorType = "agent" | "user" | "system";

/** An event as the server sends it (its type's private fields are never in `payload`). */
export interface EventEnvelope<T extends string = string, P = { [field: string]: unknown }> {
  /** A UUIDv7. */
  id: string;
  type: T;
  /** ISO 8601, in UTC. */
  timestamp: string;
  project_id: Key | null;
  actor_id: Key | null;
  actor_type: ActorType;
  payload: P;
  /** The id of the event that started the chain. */
  correlation_id: string;
  /** The id of the event being handled when this one was published. */
  causation_id: string | null;
  /** The publisher's W3C trace context (`00-<trace id>-<span id>-<flags>`), when it traced. */
  traceparent?: string;
}

/** Event types and their payloads, as `EventPayloads` of the generated catalog. */
export type EventMap = object;

/** Any type with any payload: the map of a client created without one. */
export interface AnyEvents {
  [type: string]: { [field: string]: unknown };
}

/** The events of types `T` of map `M` (all of them by default): a union that narrows on `type`. */
export type EventOf<M extends EventMap, T extends keyof M & string = keyof M & string> = {
  [K in T]: EventEnvelope<K, M[K]>;
}[T];

/**
 * The event types a shell-style pattern may match: `*` and `?` stand for any text
 * (a `?` for exactly one character, which types cannot say), and a pattern with
 * `[...]` may match any type.
 */
export type PatternTypes<P extends string> = P extends `${string}[${string}`
  ? string
  : P extends `${infer Head}*${infer Tail}`
    ? `${QuestionMarks<Head>}${string}${PatternTypes<Tail>}`
    : QuestionMarks<P>;

type QuestionMarks<P extends string> = P extends `${infer Head}?${infer Tail}`
  ? `${Head}${string}${QuestionMarks<Tail>}`
  : P;

/** The events a subscription with the `types` patterns `P` receives (all when null). */
export type Matching<M extends EventMap, P> = P extends readonly string[]
  ? EventOf<M, Extract<keyof M & string, PatternTypes<P[number]>>>
  : EventOf<M>;

export type ResetReason =
  | "since_unknown"
  | "position_unknown"
  | "epoch_changed"
  | "pruned"
  | "too_many_missed"
  | "log_unavailable"
  | "replay_limited";

export type ErrorCode =
  | "invalid_json"
  | "binary_not_supported"
  | "frame_too_large"
  | "unknown_action"
  | "missing_field"
  | "invalid_field"
  | "invalid_channel"
  | "too_many_subscriptions"
  | "forbidden"
  | "not_subscribed"
  | "unavailable"
  | "rate_limited"
  | "no_presence"
  | "presence_unavailable";

/** Frames the server sends (docs/protocol.md). */
export interface EventFrame<E = EventEnvelope> {
  type: "event";
  channel: string;
  /** The event's place on the channel's stream; absent when it is kept out of the log. */
  position?: number;
  event: E;
}

export interface SubscribedFrame {
  type: "subscribed";
  channel: string;
  replayed: number;
  epoch: string;
  position: number;
}

export interface ResetFrame {
  type: "reset";
  channel: string;
  reason: ResetReason;
  epoch: string;
  position: number;
}

export interface UnsubscribedFrame {
  type: "unsubscribed";
  channel: string;
  reason: "requested" | "forbidden";
}

/** A present user: its key (the user's pk as text) and what the PRESENCE hook exposes. */
export interface PresentUser<I = { [field: string]: unknown }> {
  key: string;
  info: I;
  /** How many connections it has on the channel (snapshots only). */
  connections?: number;
}

export type PresenceFrame =
  | { type: "presence"; channel: string; kind: "snapshot"; users: Required<PresentUser>[] }
  | { type: "presence"; channel: string; kind: "join" | "leave"; user: PresentUser };

export interface PongFrame {
  type: "pong";
}

export interface ErrorFrame {
  type: "error";
  code: ErrorCode;
  message: string;
  action: string | null;
  channel: string | null;
}

export type ServerFrame<M extends EventMap = AnyEvents> =
  | EventFrame<EventOf<M>>
  | SubscribedFrame
  | ResetFrame
  | UnsubscribedFrame
  | PresenceFrame
  | PongFrame
  | ErrorFrame;

export type Status = "idle" | "connecting" | "open" | "reconnecting" | "signed_out" | "closed";

export interface ClientOptions {
  /** ms before the first reconnect; doubles on each failed attempt (default 500). */
  minDelay?: number;
  /** ms, the longest wait between attempts (default 30000). */
  maxDelay?: number;
  /** ms between pings (default 25000). */
  pingInterval?: number;
  /** Event ids remembered per channel, for events without a position (default 1000). */
  dedupeSize?: number;
  onStatus?: (state: Status, detail: { delay?: number; code?: number }) => void;
  /** The gap cannot be filled: reload your state; events after `position` follow. */
  onReset?: (
    channel: string,
    reason: ResetReason,
    where: { epoch: string; position: number },
  ) => void;
  /** Error frames, and `unsubscribed` with reason "forbidden" (access ended). */
  onError?: (frame: ErrorFrame | UnsubscribedFrame) => void;
}

export interface SubscribeOptions<P extends readonly string[] | null = null> {
  /** Where the caller stands on the channel (with its `epoch`): replay what came after. */
  position?: number | null;
  epoch?: string | null;
  /** An event id: the older way to resume. */
  since?: string | null;
  /** Shell-style patterns of the types wanted; null: all. */
  types?: P;
  /** Ask for presence frames: a snapshot, then each user's join and leave. */
  presence?: PresenceCallbacks | null;
}

export interface PresenceCallbacks {
  /** Everyone present; again after a reconnect, replacing what came before. */
  onSnapshot?: (users: Required<PresentUser>[], channel: string) => void;
  /** A user's first connection arrived. */
  onJoin?: (user: PresentUser, channel: string) => void;
  /** A user's last connection went (closed, or its server died: within the TTL). */
  onLeave?: (user: PresentUser, channel: string) => void;
}

export interface Position {
  position: number | null;
  epoch: string | null;
}

export declare class EventBusClient<M extends EventMap = AnyEvents> {
  constructor(url?: string, options?: ClientOptions);
  readonly url: string;
  status: Status;
  /** Open the connection (a no-op when it is open or opening). */
  connect(): this;
  /**
   * Receive the events of `channel` as `onEvent(event, channel, position)`; returns a
   * function that unsubscribes. With `types`, `event` is the union of the matching types.
   */
  subscribe<const P extends readonly string[] | null = null>(
    channel: string,
    options?: SubscribeOptions<P>,
    onEvent?: (event: Matching<M, P>, channel: string, position: number | null) => void,
  ): () => void;
  unsubscribe(channel: string): void;
  /** Where `channel` stands: `{position, epoch}`; null when not subscribed. */
  position(channel: string): Position | null;
  /** Who is present on `channel`, as the frames said; empty without `presence`. */
  presence(channel: string): PresentUser[];
  /** Close the connection for good; subscriptions are kept for a later connect(). */
  close(): void;
}
