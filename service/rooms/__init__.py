"""WebSocket rooms across every worker and replica, with Redis (or Valkey) Streams as the backplane.

The wire protocol (README.md, "Rooms"; the OpenAPI description):

- `WS /ws/rooms/{room}?after=<id>` joins a room. Each message reaches the member as one text frame
  `{"id": "<id>", "room": "<room>", "data": <any JSON>, "sent_at": <unix seconds>}`, in the room's order.
  With `after`, every message after that id still in the room's history comes first, then the live ones:
  no gap and no duplicate at the seam.
- A member publishes by sending `{"data": <any JSON>}`; anyone with `POST /api/rooms/{room}/messages`
  and the same body: 202 `{"id": "<id>"}`.
- Ids are opaque strings, unique and ordered per room (Redis stream ids); `after` takes any id received.
- Close codes (protocol.Close): 1008 bad input or publishing too fast, 1009 a message above
  ROOMS_MAX_MESSAGE_BYTES, 1011 the backplane is down, 1012 the worker restarts (the platform's drain),
  1013 the member's send queue is full or its worker follows ROOMS_MAX_ROOMS rooms. After each of them
  (but 1008 and 1009) a client reconnects with `after` = the last id it received and misses nothing the
  room still keeps.

One worker holds one `Hub` (hub.py): one reader per worker follows every room its members are in with one
XREAD BLOCK and hands each message to each local member's bounded queue (member.py) without waiting for
any of them. backplane.py is the Redis side, routes.py the two routes.
"""
