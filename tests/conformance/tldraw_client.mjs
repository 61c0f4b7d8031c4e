// A real @rocicorp/zero 1.9.0 client of tldraw's schema (tests/apps/tldraw/schema.mjs, copied
// next to this file), driven by the Python test over stdin/stdout, one JSON object per line.
//
// It materializes the tldraw queries of one user (ownedFiles, sharedWithMe, myFiles), then
// answers commands:
//   {"expect": {<query>: [<ids>], …}}   wait until each view's ids (sorted) are these → {"ok", "views"}
//   {"mutate": {"name": "file.rename", "args": {…}}}  run a custom mutator → {"ok", "client", "server"}
//   {"close": true}                     close the client and exit
// Env: ZERO_URL (http://host:port of zcache), USER_ID.
import {createInterface} from 'node:readline';
import {Zero} from '@rocicorp/zero';
import {schema, queries, mutators} from './schema.mjs';

const userID = process.env.USER_ID;
const z = new Zero({
  cacheURL: process.env.ZERO_URL,
  schema,
  mutators,
  userID,
  auth: `user:${userID}`,
  context: {userID},
  kvStore: 'mem',
  logLevel: 'error',
});

const views = {
  ownedFiles: z.materialize(queries.ownedFiles()),
  sharedWithMe: z.materialize(queries.sharedWithMe()),
  myFiles: z.materialize(queries.myFiles()),
};
const complete = {};
for (const [name, view] of Object.entries(views)) {
  view.addListener((_data, resultType) => {
    if (resultType === 'complete') complete[name] = true;
  });
}

const ids = name =>
  views[name].data.map(row => (name === 'myFiles' ? row.fileId : row.id)).sort();

function snapshot() {
  return Object.fromEntries(
    Object.keys(views).map(name => [name, {complete: !!complete[name], rows: views[name].data}]),
  );
}

const out = value => process.stdout.write(JSON.stringify(value) + '\n');
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function expectViews(expected, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const matches = Object.entries(expected).every(
      ([name, want]) => complete[name] && JSON.stringify(ids(name)) === JSON.stringify([...want].sort()),
    );
    if (matches) return out({ok: true, views: snapshot()});
    if (Date.now() > end) return out({ok: false, error: 'timeout', views: snapshot()});
    await sleep(50);
  }
}

async function mutate({name, args}) {
  const [ns, fn] = name.split('.');
  const result = z.mutate(mutators[ns][fn](args));
  const client = await result.client;
  const server = await Promise.race([result.server, sleep(20000).then(() => 'timeout')]);
  out({ok: server !== 'timeout' && server?.type !== 'error', client, server});
}

for await (const line of createInterface({input: process.stdin})) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  try {
    if (command.expect) await expectViews(command.expect);
    else if (command.mutate) await mutate(command.mutate);
    else if (command.close) {
      await z.close();
      out({ok: true});
      process.exit(0);
    }
  } catch (e) {
    out({ok: false, error: String(e?.stack ?? e)});
  }
}
