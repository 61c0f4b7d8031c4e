// Many real @rocicorp/zero 1.9.0 clients of tldraw's schema in one Node process, driven over
// stdin/stdout (one JSON command per line, one JSON answer per line, strictly in turn). Used by
// bench/sync_server.py and tests/e2e/test_crash_restart.py.
//
// Every client is its own Zero instance with kvStore 'mem' and its own userID, hence its own
// client group, and materializes one legacy (AST) query: the server's read permissions must
// allow the rows. No auth token is sent (zero-cache 1.9 crashes on a token it cannot verify).
//
// Commands:
//   {"op": "open", "url"?, "clients": [{"key", "query": {"kind", ...}}], "timeoutMs"}
//       start every client at once; answer when all have a complete result (or the timeout):
//       {"ok", "started": {key: epoch ms}, "complete": {key: epoch ms}, "missing": [key],
//        "server": {key: ms}}: per client, the time it waited on the server, as its socket saw it
//        (socket open → `connected`, plus its first `changeDesiredQueries` sent → the last
//        `pokeEnd` received before the result was complete; from the socket's open when the query
//        went out before `connected`); the rest of started → complete is the client's own work
//        (and the TCP and WebSocket handshakes)
//   {"op": "changes"}   the `lastPublished` changes seen since the last call (after each
//       client's first complete result): {"ok", "changes": [[key, rowId, value, seen epoch µs]]}
//   {"op": "rows", "keys"?}   each client's view: {"ok", "rows": {key: {complete, clientID, clientGroupID, rows}}}
//   {"op": "close", "keys"?}  close clients (all by default)
//   {"op": "stats"}     this process's CPU seconds and RSS
//   {"op": "exit"}
// Env: ZERO_URL, the sync server (http://host:port) when `open` names none.
import {createInterface} from 'node:readline';
import {Zero} from '@rocicorp/zero';
import {schema} from './schema.mjs';

// stdout carries the answers only: Zero's own logging goes to stderr.
console.log = console.info = console.debug = console.warn = (...args) => console.error(...args);

const legacySchema = {...schema, enableLegacyQueries: true};
const clients = new Map(); // key -> {z, view, complete, seen: Map(rowId -> lastPublished)}
let changes = [];

const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;
const nowMs = () => performance.timeOrigin + performance.now();

// Each client's socket, timed (by userID, which is the client's key): when it opened, when
// `connected` arrived, when the first `changeDesiredQueries` went out, when each `pokeEnd`
// arrived. The listeners are registered before Zero's, so a time is taken on arrival.
const wire = new Map();
globalThis.WebSocket = class TimedWebSocket extends globalThis.WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const key = new URL(url).searchParams.get('userID');
    const times = {opened: null, connected: null, querySent: null, pokeEnds: []};
    wire.set(key, times);
    this.addEventListener('open', () => (times.opened = nowMs()));
    this.addEventListener('message', event => {
      if (typeof event.data !== 'string') return;
      if (event.data.startsWith('["pokeEnd"')) times.pokeEnds.push(nowMs());
      else if (times.connected === null && event.data.startsWith('["connected"')) times.connected = nowMs();
    });
    this._times = times;
  }

  send(data) {
    if (this._times.querySent === null && typeof data === 'string' && data.startsWith('["changeDesiredQueries"')) this._times.querySent = nowMs();
    super.send(data);
  }
};

function serverShare(key, completeAt) {
  const t = wire.get(key);
  if (!t || t.opened === null || t.connected === null) return null;
  const ends = t.pokeEnds.filter(e => e <= completeAt);
  if (!ends.length) return null;
  const lastEnd = ends[ends.length - 1];
  if (t.querySent === null || t.querySent > lastEnd || t.querySent < t.connected) return lastEnd - t.opened;
  return t.connected - t.opened + lastEnd - t.querySent;
}
const out = value => process.stdout.write(JSON.stringify(value) + '\n');

function buildQuery(z, q) {
  const f = z.query.file;
  switch (q.kind) {
    case 'files': // a user's files
      return f.where('ownerId', q.user);
    case 'states': // a user's file states with their files
      return z.query.file_state.where('userId', q.user).related('file');
    case 'newest':
      return f.orderBy('updatedAt', 'desc').limit(q.limit ?? 100);
    case 'owners': // the files of several owners
      return f.where('ownerId', 'IN', q.users);
    case 'ids':
      return f.where('id', 'IN', q.ids);
    default:
      throw new Error(`unknown query kind ${q.kind}`);
  }
}

function watch(key, rows, state) {
  // Rows of `states` carry their file in `file`; others are files.
  for (const row of rows) {
    const file = row.file ?? row;
    if (!file || file.lastPublished === undefined) continue;
    const before = state.seen.get(file.id);
    if (before !== file.lastPublished) {
      if (state.complete && before !== undefined) changes.push([key, file.id, file.lastPublished, nowUs()]);
      state.seen.set(file.id, file.lastPublished);
    }
  }
}

function open({url = process.env.ZERO_URL, clients: specs, timeoutMs = 60000}) {
  const started = {};
  const complete = {};
  const server = {};
  return new Promise(resolve => {
    let pending = specs.length;
    const finish = () => {
      clearTimeout(timer);
      resolve({ok: pending === 0, started, complete, server, missing: specs.map(s => s.key).filter(k => !(k in complete))});
    };
    const timer = setTimeout(finish, timeoutMs);
    if (pending === 0) return finish();
    for (const {key, query} of specs) {
      started[key] = nowUs() / 1000;
      const z = new Zero({cacheURL: url, schema: legacySchema, userID: key, kvStore: 'mem', logLevel: process.env.ZERO_CLIENT_LOG_LEVEL ?? 'error'});
      const view = z.materialize(buildQuery(z, query));
      const state = {z, view, complete: false, seen: new Map(), group: null};
      z.clientGroupID.then(id => (state.group = id));
      clients.set(key, state);
      view.addListener((data, resultType) => {
        if (resultType === 'complete' && !state.complete) {
          watch(key, data, state); // the hydrated values are not changes
          state.complete = true;
          complete[key] = nowUs() / 1000;
          server[key] = serverShare(key, complete[key]);
          if (--pending === 0) finish();
          return;
        }
        watch(key, data, state);
      });
    }
  });
}

async function close(keys) {
  const chosen = keys ?? [...clients.keys()];
  await Promise.all(chosen.map(k => clients.get(k)?.z.close()));
  for (const k of chosen) {
    clients.delete(k);
    wire.delete(k);
  }
  return {ok: true, closed: chosen.length};
}

function rows(keys) {
  const chosen = keys ?? [...clients.keys()];
  const view = k => {
    const c = clients.get(k);
    return {complete: c.complete, clientID: c.z.clientID, clientGroupID: c.group, rows: c.view.data};
  };
  return {ok: true, rows: Object.fromEntries(chosen.map(k => [k, view(k)]))};
}

function stats() {
  const cpu = process.cpuUsage();
  return {ok: true, cpuS: (cpu.user + cpu.system) / 1e6, rssBytes: process.memoryUsage().rss, clients: clients.size};
}

for await (const line of createInterface({input: process.stdin})) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  try {
    switch (command.op) {
      case 'open':
        out(await open(command));
        break;
      case 'changes':
        out({ok: true, changes});
        changes = [];
        break;
      case 'rows':
        out(rows(command.keys));
        break;
      case 'close':
        out(await close(command.keys));
        break;
      case 'stats':
        out(stats());
        break;
      case 'exit':
        await close();
        out({ok: true});
        process.exit(0);
      default:
        out({ok: false, error: `unknown op ${command.op}`});
    }
  } catch (e) {
    out({ok: false, error: String(e?.stack ?? e)});
  }
}
