// Places orders on a running sagaflow through the generated TypeScript client and checks the
// results (the same checks as clients/python/place_order.py).
//
//   npm ci && npm run build          # in clients/typescript
//   node dist/place_order.js [ADDR]  # ADDR default 127.0.0.1:50051
//
// Against the demo data of a fresh `sagaflow dev` (README.md, "Walkthrough"), it
// 1. places alice's order of 1 KB-001 (89,000 KRW) with her coupon WELCOME-ALICE (10 %: 8,900)
//    and 5,000 points, waits for its saga with GetOrder's `wait`, and expects COMPLETED with
//    payable 75,100 KRW;
// 2. places bob's order of 1 MS-001 (29,000 KRW) with WELCOME-BOB and 1,000 points on the card
//    token `tok_capture_decline`, and expects FAILED with FAILURE_REASON_PAYMENT_DECLINED and the
//    discount cleared (payable 28,000 KRW);
// 3. resends alice's request id with another request and reads the google.rpc.ErrorInfo of the
//    ALREADY_EXISTS answer (reason IDEMPOTENCY_KEY_REUSED, domain sagaflow), then sends an unknown
//    payment method and reads the google.rpc.BadRequest of the INVALID_ARGUMENT answer.
//
// Every call of a user carries that user's bearer token from the environment,
// SAGAFLOW_TOKEN_ALICE and SAGAFLOW_TOKEN_BOB (`sagaflow token alice` prints one for a `sagaflow
// dev`; docs/operations.md, "End users"); unset, calls carry none (`sagaflow dev --open`).
//
// Every value is checked: a wrong one prints what was expected and exits 1 (WELCOME-ALICE is
// single-use, so a second run against the same data fails at step 1). Exits 2 when the server
// cannot be reached.

import { randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';

import * as grpc from '@grpc/grpc-js';

import { auth, errorDetails, orderClient, unary } from './client';
import type { GetOrderResponse__Output } from './gen/sagaflow/order/v1/GetOrderResponse';
import type { Order__Output } from './gen/sagaflow/order/v1/Order';
import type { OrderServiceClient } from './gen/sagaflow/order/v1/OrderService';
import type { PlaceOrderRequest } from './gen/sagaflow/order/v1/PlaceOrderRequest';
import type { PlaceOrderResponse__Output } from './gen/sagaflow/order/v1/PlaceOrderResponse';

/** A value the server returned is not the expected one. */
class Mismatch extends Error {}

function check<T>(what: string, got: T, want: T): void {
  if (!isDeepStrictEqual(got, want)) {
    throw new Mismatch(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

/** An int64 amount (KRW won) as the loader returns it, a decimal string, as a number. */
function won(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new Mismatch(`amount ${value} is not a safe integer`);
  return n;
}

/** PlaceOrder as the request's user (with that user's token). */
function place(orders: OrderServiceClient, request: PlaceOrderRequest): Promise<Order__Output> {
  return unary<PlaceOrderRequest, PlaceOrderResponse__Output>(
    orders,
    orders.PlaceOrder,
    request,
    10_000,
    auth(request.userId ?? ''),
  ).then((reply) => {
    if (reply.order === null) throw new Mismatch('PlaceOrder returned no order');
    return reply.order;
  });
}

/** GetOrder with `wait`: blocks until the order is terminal (at most 30 s). */
async function waitFor(
  orders: OrderServiceClient,
  user: string,
  orderId: string,
): Promise<Order__Output> {
  const reply = await unary<object, GetOrderResponse__Output>(
    orders,
    orders.GetOrder,
    { orderId, wait: { seconds: 30 } },
    40_000,
    auth(user),
  );
  if (reply.order === null) throw new Mismatch('GetOrder returned no order');
  return reply.order;
}

/** The error a call rejects with; a success is a mismatch. */
async function rpcError(call: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    const reply = await call;
    throw new Mismatch(`expected an error, got ${JSON.stringify(reply)}`);
  } catch (err) {
    if (err instanceof Mismatch) throw err;
    return err as grpc.ServiceError;
  }
}

async function run(orders: OrderServiceClient): Promise<void> {
  // 1. alice: 89,000 - 10 % coupon (8,900) - 5,000 points = 75,100 KRW payable.
  const request: PlaceOrderRequest = {
    // A fresh request id per intended order; resending the same id returns the same order.
    requestId: `typescript-example-${randomUUID()}`,
    userId: 'alice',
    lines: [{ sku: 'KB-001', quantity: 1 }],
    couponCode: 'WELCOME-ALICE',
    points: 5000,
    paymentMethod: 'tok_ok',
  };
  const placed = await place(orders, request);
  check('placed status', placed.status, 'ORDER_STATUS_PENDING');
  // The discount is applied by saga step 2: until then payable is subtotal - points.
  check('placed payable', won(placed.payable), 84000);
  const order = await waitFor(orders, 'alice', placed.orderId);
  check(
    "alice's order status (WELCOME-ALICE is single-use: run against fresh demo data)",
    order.status,
    'ORDER_STATUS_COMPLETED',
  );
  check(
    'lines',
    order.lines.map((l) => [l.sku, l.quantity, won(l.unitPrice)]),
    [['KB-001', 1, 89000]],
  );
  check('subtotal', won(order.subtotal), 89000);
  check('discount', won(order.discount), 8900);
  check('points', won(order.points), 5000);
  check('payable', won(order.payable), 75100);
  check('saga id', order.sagaId, order.orderId);
  console.log(
    `completed ${order.orderId}: subtotal ${order.subtotal} discount ${order.discount} ` +
      `points ${order.points} payable ${order.payable}`,
  );

  // 2. bob: the card is declined at capture; everything is compensated.
  const bob = await place(orders, {
    requestId: `typescript-example-${randomUUID()}`,
    userId: 'bob',
    lines: [{ sku: 'MS-001', quantity: 1 }],
    couponCode: 'WELCOME-BOB',
    points: 1000,
    paymentMethod: 'tok_capture_decline',
  });
  const failed = await waitFor(orders, 'bob', bob.orderId);
  check("bob's order status", failed.status, 'ORDER_STATUS_FAILED');
  check('failure reason', failed.failureReason, 'FAILURE_REASON_PAYMENT_DECLINED');
  check('discount after failure', won(failed.discount), 0);
  check('payable after failure', won(failed.payable), 28000);
  console.log(`failed ${failed.orderId}: ${failed.failureReason}`);

  // 3a. The same request id with another request: ALREADY_EXISTS + ErrorInfo.
  const reused = await rpcError(
    place(orders, { ...request, lines: [{ sku: 'KB-001', quantity: 2 }] }),
  );
  check('reused request id code', grpc.status[reused.code], 'ALREADY_EXISTS');
  const info = errorDetails(reused).errorInfo;
  check('ErrorInfo reason', info?.reason, 'IDEMPOTENCY_KEY_REUSED');
  check('ErrorInfo domain', info?.domain, 'sagaflow');
  console.log(`reused request id: ALREADY_EXISTS reason ${info?.reason} domain ${info?.domain}`);

  // 3b. A payment method the deployment does not accept: INVALID_ARGUMENT + BadRequest.
  const bad = await rpcError(
    place(orders, {
      ...request,
      requestId: `typescript-example-${randomUUID()}`,
      paymentMethod: 'tok_unknown',
    }),
  );
  check('unknown payment method code', grpc.status[bad.code], 'INVALID_ARGUMENT');
  const fields = errorDetails(bad).badRequest?.fieldViolations.map((v) => v.field);
  check('BadRequest fields', fields, ['payment_method']);
  console.log(`unknown payment method: INVALID_ARGUMENT fields ${fields?.join(',')}`);
}

async function main(): Promise<number> {
  const addr = process.argv[2] ?? '127.0.0.1:50051';
  const orders = orderClient(addr);
  try {
    await new Promise<void>((resolve, reject) =>
      orders.waitForReady(Date.now() + 10_000, (err) => (err ? reject(err) : resolve())),
    );
  } catch {
    console.error(`cannot reach ${addr}`);
    return 2;
  }
  try {
    await run(orders);
  } catch (err) {
    if (err instanceof Mismatch) {
      console.error(`MISMATCH ${err.message}`);
      return 1;
    }
    throw err;
  } finally {
    orders.close();
  }
  console.log('typescript client: all checks passed');
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  },
);
