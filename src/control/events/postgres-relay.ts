/**
 * Events across replicas over PostgreSQL LISTEN/NOTIFY, on a dedicated session (not the
 * store's pool: a pooled connection does not keep its LISTEN).
 *
 * Each NOTIFY on channel nimbus_events carries {"r": replica, "e": [events]}: the events this
 * replica published, oldest first, as many as fit one payload. One session sends them one
 * NOTIFY at a time, so every receiver gets one replica's events in publish order; a receiver
 * drops its own (PostgreSQL delivers a session's notifications to itself too).
 *
 * PostgreSQL refuses payloads of 8,000 bytes or more: an event that alone would not fit is
 * sent without its attributes, as `attributes: {truncated: true}` (type, action, id and project
 * always arrive; a subscriber that needs the rest reads the resource). Local subscribers of the
 * publishing replica get it whole.
 *
 * At most once: while the session is down (it is reopened every second) events published here
 * wait in a bounded outbox and others' are missed; a batch whose NOTIFY failed is dropped
 * rather than risk delivering it twice. Operation waits re-read the store (operations.ts).
 */
import { logger } from '../../core/log.js';
import { PostgresSession } from '../../store/sql/postgres-session.js';
import type { EventRelay, NimbusEvent } from './event-bus.js';

const log = logger('events.relay');

export const EVENT_CHANNEL = 'nimbus_events';
/** PostgreSQL's payload limit is 8,000 bytes; the envelope's own bytes are counted in. */
export const MAX_PAYLOAD_BYTES = 7_999;
/** Events kept for sending while the session is down; the oldest go first beyond it. */
const MAX_OUTBOX = 10_000;
const REOPEN_MS = 1_000;

type WireEvent = Omit<NimbusEvent, 'seq'>;
interface Envelope {
  r: string;
  e: WireEvent[];
}

export class PostgresEventRelay implements EventRelay {
  private session: PostgresSession | undefined;
  /** Serialised events (each fits a payload alone), oldest first. */
  private readonly outbox: string[] = [];
  private sending: Promise<void> | undefined;
  private reopenTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly envelopeBytes: number;
  /** Events not relayed (outbox overflow, failed NOTIFY), for logs and tests. */
  dropped = 0;

  private constructor(private readonly location: string, private readonly replicaId: string, private readonly deliver: (e: WireEvent) => void) {
    this.envelopeBytes = Buffer.byteLength(JSON.stringify({ r: replicaId, e: [] } satisfies Envelope));
  }

  /** Opens the session and listens before resolving: events published by others from then on arrive. */
  static async open(location: string, replicaId: string, deliver: (e: WireEvent) => void): Promise<PostgresEventRelay> {
    const relay = new PostgresEventRelay(location, replicaId, deliver);
    await relay.connect();
    return relay;
  }

  private async connect(): Promise<void> {
    const session = await PostgresSession.open(this.location, { applicationName: `nimbus-events:${this.replicaId}`, queryTimeoutMs: 5_000 });
    try {
      await session.listen(EVENT_CHANNEL, (payload) => this.receive(payload));
    } catch (e) {
      await session.close();
      throw e;
    }
    if (this.closed) {
      await session.close();
      return;
    }
    this.session = session;
    session.onLost(() => {
      if (this.session === session) this.session = undefined;
      this.scheduleReopen();
    });
    this.kick();
  }

  private scheduleReopen(): void {
    if (this.closed || this.reopenTimer) return;
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = undefined;
      this.connect().catch((e: unknown) => {
        log.warn('reopening the event session failed', { error: String(e) });
        this.scheduleReopen();
      });
    }, REOPEN_MS);
    this.reopenTimer.unref();
  }

  private receive(payload: string): void {
    let envelope: Envelope;
    try {
      envelope = JSON.parse(payload) as Envelope;
    } catch {
      log.warn('an event notification that is not JSON was ignored', { bytes: payload.length });
      return;
    }
    if (envelope.r === this.replicaId || !Array.isArray(envelope.e)) return;
    for (const e of envelope.e) this.deliver(e);
  }

  send(e: NimbusEvent): void {
    const { seq: _localSeq, ...wire } = e;
    let text = JSON.stringify(wire);
    if (this.envelopeBytes + Buffer.byteLength(text) > MAX_PAYLOAD_BYTES) {
      text = JSON.stringify({ ...wire, attributes: { truncated: true } });
    }
    if (this.envelopeBytes + Buffer.byteLength(text) > MAX_PAYLOAD_BYTES) {
      // only an id or project of kilobytes gets here: nothing sensible to send
      log.warn('an event too large to relay was dropped', { type: e.type, action: e.action });
      this.dropped++;
      return;
    }
    this.outbox.push(text);
    if (this.outbox.length > MAX_OUTBOX) {
      this.outbox.shift();
      this.dropped++;
    }
    this.kick();
  }

  private kick(): void {
    if (this.sending || !this.session) return;
    this.sending = this.flush().finally(() => {
      this.sending = undefined;
      if (this.outbox.length && this.session && !this.closed) this.kick();
    });
  }

  /** Sends the outbox a batch at a time, one NOTIFY after the other (the order receivers see). */
  private async flush(): Promise<void> {
    while (this.outbox.length) {
      const session = this.session;
      if (!session || session.lost) return;
      let bytes = this.envelopeBytes;
      let n = 0;
      while (n < this.outbox.length) {
        const more = Buffer.byteLength(this.outbox[n]!) + (n > 0 ? 1 : 0);
        if (bytes + more > MAX_PAYLOAD_BYTES) break;
        bytes += more;
        n++;
      }
      const batch = this.outbox.splice(0, n);
      try {
        await session.notify(EVENT_CHANNEL, `{"r":${JSON.stringify(this.replicaId)},"e":[${batch.join(',')}]}`);
      } catch (e) {
        // it may have reached the server before failing: dropped, never sent twice
        this.dropped += batch.length;
        log.warn('relaying events failed', { events: batch.length, error: String(e) });
      }
    }
  }

  /** Sends what was published before this (if the session is up), then closes the session. */
  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.reopenTimer);
    this.reopenTimer = undefined;
    while (this.sending) await this.sending;
    this.closed = true;
    const session = this.session;
    this.session = undefined;
    await session?.close();
  }
}
