// Validates upstream frames with @rocicorp/zero's own schema and error wording, exactly as
// zero-cache 1.9 does before answering InvalidMessage (workers/connection.ts): reads one JSON
// string per line (the frame text) on stdin, writes one JSON line per frame: null when the frame
// is a valid upstream message, else String(error).
//
//   ZERO_PACKAGE_DIR=<node_modules/@rocicorp/zero> node upstream_oracle.mjs < frames.jsonl
import {createInterface} from 'node:readline';
import {pathToFileURL} from 'node:url';
import {join} from 'node:path';

const out = join(process.env.ZERO_PACKAGE_DIR, 'out');
const {upstreamSchema} = await import(pathToFileURL(join(out, 'zero-protocol/src/up.js')).href);
const {valita_exports: valita} = await import(pathToFileURL(join(out, 'shared/src/valita.js')).href);

for await (const line of createInterface({input: process.stdin, crlfDelay: Infinity})) {
  if (!line) continue;
  let result = null;
  try {
    valita.parse(JSON.parse(JSON.parse(line)), upstreamSchema);
  } catch (e) {
    result = String(e);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}
