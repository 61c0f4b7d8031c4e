// The tldraw app server: the push URL (/mutate) and query URL (/query) built on
// @rocicorp/zero/server, as a tldraw deployment runs next to zero-cache. Tokens are opaque
// test tokens "user:<id>" sent as "Authorization: Bearer ..."; the app derives the userID.
// Environment: APP_PORT, UPSTREAM_DB (postgres URL). Prints "listening" once ready.
import http from 'node:http';
import postgres from 'postgres';
import {handleMutateRequest, handleQueryRequest} from '@rocicorp/zero/server';
import {zeroPostgresJS} from '@rocicorp/zero/pg';
import {mustGetMutator, mustGetQuery} from '@rocicorp/zero';
import {schema, queries, mutators} from './schema.mjs';

const sql = postgres(process.env.UPSTREAM_DB, {max: 8, onnotice: () => {}});
const dbProvider = zeroPostgresJS(schema, sql);

function bearerUser(authorization) {
  const m = /^Bearer user:([^:]+)/.exec(authorization ?? '');
  return m ? m[1] : null;
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const url = new URL(req.url, `http://${req.headers.host}`);
  let status = 200;
  let out;
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    const userID = bearerUser(req.headers.authorization);
    const ctx = {userID};
    if (url.pathname === '/mutate') {
      out = await handleMutateRequest({
        dbProvider,
        userID,
        query: url.searchParams,
        body,
        handler: (transact) =>
          transact((tx, name, args) => mustGetMutator(mutators, name).fn({tx, args, ctx})),
      });
    } else if (url.pathname === '/query') {
      out = await handleQueryRequest({
        schema,
        userID,
        query: url.searchParams,
        body,
        handler: (name, args) => mustGetQuery(queries, name).fn({args, ctx}),
      });
    } else {
      status = 404;
      out = {error: 'not found'};
    }
  } catch (e) {
    status = 500;
    out = {error: String(e)};
  }
  res.writeHead(status, {'content-type': 'application/json'});
  res.end(JSON.stringify(out));
});

server.listen(Number(process.env.APP_PORT), '127.0.0.1', () => process.stdout.write('listening\n'));
const stop = async () => {
  server.close();
  await sql.end({timeout: 2});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
