"""The view syncer: client groups, their queries and CVRs, and the pokes that keep clients'
views equal to their queries over the replica. `service` runs it, `group` holds one client
group, `poke` builds pokes, `client_schema` checks a client's schema, `inspect` answers the
devtools inspector."""

from zcache.view_syncer.service import ViewSyncerService

__all__ = ["ViewSyncerService"]
