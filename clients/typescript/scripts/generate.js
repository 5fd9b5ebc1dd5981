#!/usr/bin/env node
// Generates the TypeScript types of every sagaflow contract (../../proto) and of the
// google.rpc error details into src/gen/, with @grpc/proto-loader's proto-loader-gen-types.
//
//   npm run generate          (part of `npm run build`)
//
// The output is not committed: proto/ is the contract, and generation takes a second with the
// pinned @grpc/proto-loader of package-lock.json. The options are those of proto-options.json,
// which src/client.ts passes to loadSync at run time: the types describe exactly the objects the
// loader produces (int64 as decimal strings, enums as their names).
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const here = path.resolve(__dirname, '..');
const protoRoot = path.resolve(here, '..', '..', 'proto');
const googleRoot = path.dirname(require.resolve('google-proto-files/package.json'));
const outDir = path.join(here, 'src', 'gen');
const options = JSON.parse(fs.readFileSync(path.join(here, 'proto-options.json'), 'utf8'));

function protos(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return protos(full);
    return entry.name.endsWith('.proto') ? [path.relative(protoRoot, full)] : [];
  });
}

const files = protos(protoRoot).sort();
if (files.length === 0) {
  console.error(`no .proto files under ${protoRoot}`);
  process.exit(1);
}
fs.rmSync(outDir, { recursive: true, force: true });
const loaderDir = path.dirname(require.resolve('@grpc/proto-loader/package.json'));
const bin = path.join(loaderDir, 'build', 'bin', 'proto-loader-gen-types.js');
const flags = [
  `--longs=${options.longs}`,
  `--enums=${options.enums}`,
  ...(options.keepCase ? ['--keepCase'] : []),
  ...(options.defaults ? ['--defaults'] : []),
  ...(options.oneofs ? ['--oneofs'] : []),
  '--includeComments',
  '--grpcLib=@grpc/grpc-js',
  `--outDir=${outDir}`,
  // The file names come after `--`: yargs would take them as more include dirs otherwise.
  `--includeDirs=${protoRoot}`,
  `--includeDirs=${googleRoot}`,
];
const google = ['google/rpc/status.proto', 'google/rpc/error_details.proto'];
execFileSync(process.execPath, [bin, ...flags, '--', ...files, ...google], { stdio: 'inherit' });
console.log(`generated ${files.length} contracts and google.rpc details into ${outDir}`);
