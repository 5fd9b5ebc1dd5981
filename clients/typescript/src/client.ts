// The typed sagaflow client: the contracts of ../../proto loaded at run time by @grpc/proto-loader,
// typed by the interfaces that `npm run generate` writes to src/gen (the same options,
// proto-options.json, for both), and the google.rpc error details of a failed call.

import * as fs from 'node:fs';
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';

import type { ProtoGrpcType as OrderProto } from './gen/order';
import type { OrderServiceClient } from './gen/sagaflow/order/v1/OrderService';
import type { BadRequest__Output } from './gen/google/rpc/BadRequest';
import type { ErrorInfo__Output } from './gen/google/rpc/ErrorInfo';

const here = path.resolve(__dirname, '..');
/** The repository's contracts, `proto/`. */
export const PROTO_ROOT = path.resolve(here, '..', '..', 'proto');
const GOOGLE_ROOT = path.dirname(require.resolve('google-proto-files/package.json'));
const FILE_OPTIONS = JSON.parse(fs.readFileSync(path.join(here, 'proto-options.json'), 'utf8')) as {
  keepCase: boolean;
  longs: 'String' | 'Number';
  enums: 'String';
  defaults: boolean;
  oneofs: boolean;
};
// The loader takes the constructors the generator names: `String` (int64 as decimal strings,
// enums as their names) or `Number`.
const OPTIONS: protoLoader.Options = {
  ...FILE_OPTIONS,
  longs: FILE_OPTIONS.longs === 'Number' ? Number : String,
  enums: String,
};

/** An OrderService client for `addr` (`host:port`, plaintext). */
export function orderClient(addr: string): OrderServiceClient {
  const definition = protoLoader.loadSync('sagaflow/order/v1/order.proto', {
    ...OPTIONS,
    includeDirs: [PROTO_ROOT],
  });
  const proto = grpc.loadPackageDefinition(definition) as unknown as OrderProto;
  return new proto.sagaflow.order.v1.OrderService(addr, grpc.credentials.createInsecure());
}

/**
 * The call metadata of `user`: `authorization: Bearer <token>` from `SAGAFLOW_TOKEN_<USER>`
 * (`sagaflow token alice` prints one for a `sagaflow dev`), empty when it is not set.
 */
export function auth(user: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  const token = process.env[`SAGAFLOW_TOKEN_${user.toUpperCase()}`];
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** Calls a unary method of `client` with `metadata` and resolves with its reply (rejects with the ServiceError). */
export function unary<Req, Res>(
  client: grpc.Client,
  method: (
    req: Req,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, res?: Res) => void,
  ) => grpc.ClientUnaryCall,
  request: Req,
  timeoutMs: number,
  metadata: grpc.Metadata = new grpc.Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, metadata, { deadline: Date.now() + timeoutMs }, (err, res) => {
      if (err) reject(err);
      else if (res === undefined) reject(new Error('no reply'));
      else resolve(res);
    });
  });
}

let googleRoot: protobuf.Root | undefined;

function rpcTypes(): protobuf.Root {
  if (googleRoot === undefined) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) =>
      fs.existsSync(path.join(GOOGLE_ROOT, target)) ? path.join(GOOGLE_ROOT, target) : target;
    root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
    googleRoot = root;
  }
  return googleRoot;
}

/** The details of a failed call: its `grpc-status-details-bin` trailer, a google.rpc.Status. */
export interface ErrorDetails {
  errorInfo?: ErrorInfo__Output;
  badRequest?: BadRequest__Output;
}

/** Decodes the google.rpc.ErrorInfo and google.rpc.BadRequest that `err` carries, if any. */
export function errorDetails(err: grpc.ServiceError): ErrorDetails {
  const [raw] = err.metadata.get('grpc-status-details-bin');
  if (!(raw instanceof Buffer)) return {};
  const root = rpcTypes();
  const status = root.lookupType('google.rpc.Status').decode(raw) as unknown as {
    // protobufjs keeps the snake_case name of its built-in google.protobuf.Any.
    details: { type_url?: string; typeUrl?: string; value: Uint8Array }[];
  };
  const toObject = { longs: String, enums: String, defaults: true, arrays: true, objects: true };
  const details: ErrorDetails = {};
  for (const any of status.details) {
    const url = any.type_url ?? any.typeUrl ?? '';
    const name = url.slice(url.lastIndexOf('/') + 1);
    if (name !== 'google.rpc.ErrorInfo' && name !== 'google.rpc.BadRequest') continue;
    const type = root.lookupType(name);
    const message = type.toObject(type.decode(any.value), toObject);
    if (name === 'google.rpc.ErrorInfo') details.errorInfo = message as ErrorInfo__Output;
    else details.badRequest = message as BadRequest__Output;
  }
  return details;
}
