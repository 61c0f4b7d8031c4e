"""Outbound calls to the app's API server (push and query URLs) and other HTTP endpoints.

* `http`: the process's HTTP/1.1 client (h11 over Trio, keep-alive pool, timeouts, size cap);
* `url_pattern`: the URLPattern subset of `ZERO_MUTATE_URL` / `ZERO_QUERY_URL`;
* `api`: zero-cache's rules for calling the push/query URL (URL choice, query parameters,
  headers, retries, failure bodies);
* `queries`: the named-query transform through the query URL.
"""
