"""The write path (issue 6): client `push` messages become upstream writes.

Custom mutations (`type:"custom"`) are forwarded to the app's push URL exactly as zero-cache
1.9 does (§6.2): `POST <url>?schema=<app>_<shard>&appID=<app>` with the connection's token as
`Authorization: Bearer`, the allowed client/request headers, cookie and origin, up to 4
attempts for 5xx and network failures. CRUD mutations (`type:"crud"`) are applied upstream by
zcache itself under the legacy write permissions (§6.5, `crud.py`). Outcomes reach clients
only through replication: the app (or the CRUD transaction) advances
`<shard>.clients.lastMutationID` and writes error results to `<shard>.mutations`, and the view
syncer turns those rows into `lastMutationIDChanges` / `mutationsPatch` in pokes.

Invariants:

* Pushes of one client group are forwarded by one pusher task, in arrival order, one request
  at a time: mutations of a client reach the app server in order. Pushes queued behind a
  request in flight are concatenated per connection into the next request (bounded queue of
  `QUEUE_CAPACITY` pushes per group; beyond it `push()` waits).
* Exactly-once is the app server's and the CRUD transaction's job (the last-mutation-id check
  in the same transaction as the writes); zcache never retries a push after an answer, and a
  replay is reported as `alreadyProcessed` and ignored.
* A `PushFailed` (from the app, or zcache's own: http, timeout, parse, internal, and an
  `oooMutation` result or a `userID` mismatch) goes to the latest connection of each client it
  names, which then closes; later queued pushes of a failed connection are dropped (the client
  resends them after reconnecting).
* `_zero_cleanupResults` (after `ackMutationResponses`, and in bulk after `deleteClients`) is
  fire-and-forget as far as the client is concerned: failures are logged and counted.

Contract (docs: /work/briefs/contracts.md, "The write path"), with the owner's refinements:
`PushContext` has a `fail` callback (send this `error` body, then close) next to `send_error`,
and compares by identity; `MutationService.__init__` takes an optional `push_timeout_s`.
"""

from zcache.mutations.errors import PushError
from zcache.mutations.service import MutationService, PushContext
from zcache.mutations.stats import MutationStatistics

__all__ = ["MutationService", "MutationStatistics", "PushContext", "PushError"]
