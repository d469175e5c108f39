/**
 * Replies slower than this (ms, round trip) do not update the estimate of the server's clock:
 * the estimate is off by at most half the round trip.
 */
const CLOCK_SAMPLE_MAX_RTT_MS = 20;

/**
 * ServerClock is the offset between Redis's clock and this process's, learned from replies, and
 * the deadlines it gives commands (on Redis's clock).
 */
export class ServerClock {
  /** Estimated (Redis's clock − Date.now()) in ms; undefined until a reply teaches it. */
  offset: number | undefined;
  /** Round trip of the reply `offset` came from. */
  rtt = Number.POSITIVE_INFINITY;
  // Calls made in one ms with one estimate share a deadline (one buffer: the batcher sends the
  // calls that share it as one run). Never changed once made: calls in flight hold it.
  #at = Number.NaN;
  #bytes: Buffer = Buffer.alloc(8);
  // The calls of one reply mostly share one sample.
  #sampleNow = 0;
  #sampleSent = 0;
  #sampleReceived = 0;

  /**
   * The deadline, on Redis's clock, of a call sent at `sentAt` (Date.now) for `timeoutMs`; before
   * any reply taught the clock, `-timeoutMs` (no deadline; remember the call that long).
   */
  deadline(sentAt: number, timeoutMs: number): Buffer {
    const at = this.offset === undefined ? -timeoutMs : sentAt + timeoutMs + this.offset;
    if (at !== this.#at) {
      this.#at = at;
      this.#bytes = Buffer.allocUnsafe(8);
      this.#bytes.writeDoubleLE(at, 0);
    }
    return this.#bytes;
  }

  /** Learns from a reply that says Redis's clock read `serverNowUs` (µs) between `sentAt` and `receivedAt`. */
  sample(serverNowUs: number, sentAt: number, receivedAt: number): void {
    if (serverNowUs === this.#sampleNow && sentAt === this.#sampleSent && receivedAt === this.#sampleReceived) return;
    this.#sampleNow = serverNowUs;
    this.#sampleSent = sentAt;
    this.#sampleReceived = receivedAt;
    const rtt = receivedAt - sentAt;
    if ((rtt <= CLOCK_SAMPLE_MAX_RTT_MS || rtt < this.rtt) && serverNowUs > 0) {
      this.offset = serverNowUs / 1000 - (sentAt + receivedAt) / 2;
      this.rtt = rtt;
    }
  }
}
