/**
 * A loopback TCP proxy between a client and redis-server that can lose a reply: armed, it
 * forwards the client's commands but, when the server's next reply arrives, closes both
 * connections instead of passing it on. The command ran; the client never hears of it.
 */
import net from 'node:net';

export interface DropProxy {
  readonly port: number;
  /** Lose the next reply (and close the connection it came on). */
  dropNextReply(): void;
  /** Replies lost so far. */
  readonly dropped: number;
  close(): Promise<void>;
}

export async function startDropProxy(targetPort: number): Promise<DropProxy> {
  let armed = false;
  let dropped = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((down) => {
    const up = net.connect(targetPort, '127.0.0.1');
    sockets.add(down);
    sockets.add(up);
    const close = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    down.on('data', (d) => up.write(d));
    up.on('data', (d) => {
      if (armed) {
        armed = false;
        dropped++;
        close();
        return;
      }
      down.write(d);
    });
    down.on('error', close);
    up.on('error', close);
    down.on('close', close);
    up.on('close', close);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  return {
    port: typeof addr === 'object' && addr !== null ? addr.port : 0,
    dropNextReply() {
      armed = true;
    },
    get dropped() {
      return dropped;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
