// The broadcast server the seed design describes, written as it says: Node's `ws`, one room
// (a Set of sockets) per DAG, and every event stringified once and sent to every open socket of
// its room. `dagstream bench fanout --url ... --publish-url ...` measures it with the same light
// clients it uses on dagstream, so the two figures can be read side by side.
//
//   node bench/peers/seed-server.mjs [PORT]    (0 or none: a free port)
//
// Paths: `GET /api/dags/{id}/stream` (WebSocket) joins room `id`; `GET /api/dags/{id}/publish`
// (WebSocket) is the engine: each JSON message it sends is an event for room `id`, numbered
// (`seq`, as dagstream numbers events) and broadcast. It prints `listening on PORT` when ready.
// No credentials, no storage, no replay: only the fan-out the seed shows.

import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ noServer: true });

/** Per-DAG rooms: the open dashboards of each run. */
const rooms = new Map();
/** The next `seq` of each room. */
const sequence = new Map();

function broadcast(dagId, event) {
  const clients = rooms.get(dagId);
  if (!clients) return;
  const msg = JSON.stringify(event);
  for (const ws of clients) {
    if (ws.readyState === ws.OPEN) ws.send(msg);
  }
}

const server = createServer((_request, response) => {
  response.writeHead(404).end();
});

server.on('upgrade', (request, socket, head) => {
  const match = /^\/api\/dags\/([^/?]+)\/(stream|publish)(\?.*)?$/.exec(request.url ?? '');
  if (!match) {
    socket.end('HTTP/1.1 404 Not Found\r\n\r\n');
    return;
  }
  const [, dagId, role] = match;
  wss.handleUpgrade(request, socket, head, (ws) => {
    ws.on('error', () => {});
    if (role === 'stream') {
      if (!rooms.has(dagId)) rooms.set(dagId, new Set());
      rooms.get(dagId).add(ws);
      ws.on('close', () => rooms.get(dagId)?.delete(ws));
      return;
    }
    ws.on('message', (data) => {
      let event;
      try {
        event = JSON.parse(data.toString());
      } catch {
        return;
      }
      const seq = (sequence.get(dagId) ?? 0) + 1;
      sequence.set(dagId, seq);
      broadcast(dagId, { seq, ...event });
    });
  });
});

const port = Number(process.argv[2] ?? 0);
server.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
