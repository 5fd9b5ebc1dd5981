#!/usr/bin/env python3
"""Places orders on a running sagaflow through the generated Python client and checks the results.

    python3 clients/python/generate.py                      # once, after each change of proto/
    python3 clients/python/place_order.py [ADDR] [--gen-dir DIR]   # ADDR default 127.0.0.1:50051

Against the demo data of a fresh `sagaflow dev` (README.md, "Walkthrough"), it
1. places alice's order of 1 KB-001 (89,000 KRW) with her coupon WELCOME-ALICE (10 %: 8,900) and
   5,000 points, waits for its saga with GetOrder's `wait`, and expects COMPLETED with payable
   75,100 KRW;
2. places bob's order of 1 MS-001 (29,000 KRW) with WELCOME-BOB and 1,000 points on the card
   token `tok_capture_decline`, and expects FAILED with FAILURE_REASON_PAYMENT_DECLINED and the
   discount cleared (payable 28,000 KRW);
3. resends alice's request id with another request and reads the google.rpc.ErrorInfo of the
   ALREADY_EXISTS answer (reason IDEMPOTENCY_KEY_REUSED, domain sagaflow), then sends an unknown
   payment method and reads the google.rpc.BadRequest of the INVALID_ARGUMENT answer.

Every call of a user carries that user's bearer token from the environment,
`SAGAFLOW_TOKEN_ALICE` and `SAGAFLOW_TOKEN_BOB` (`sagaflow token alice` prints one for a
`sagaflow dev`; docs/operations.md, "End users"); unset, calls carry none (`sagaflow dev --open`).

Every value is checked: a wrong one prints what was expected and exits 1 (WELCOME-ALICE is
single-use, so a second run against the same data fails at step 1). Exits 2 when the server
cannot be reached.
"""

import argparse
import os
import pathlib
import sys
import uuid

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

HERE = pathlib.Path(__file__).resolve().parent


class Mismatch(Exception):
    """A value the server returned is not the expected one."""


def check(what: str, got, want) -> None:
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addr", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--gen-dir", default=str(HERE / "gen"), help="output of generate.py")
    args = parser.parse_args()
    sys.path.insert(0, args.gen_dir)
    try:
        from sagaflow.order.v1 import order_pb2, order_pb2_grpc
    except ImportError as err:
        print(f"{err}: run `python3 {HERE / 'generate.py'}` first", file=sys.stderr)
        return 2

    with grpc.insecure_channel(args.addr) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            print(f"cannot reach {args.addr}", file=sys.stderr)
            return 2
        orders = order_pb2_grpc.OrderServiceStub(channel)
        try:
            run(orders, order_pb2)
        except Mismatch as err:
            print(f"MISMATCH {err}", file=sys.stderr)
            return 1
    print("python client: all checks passed")
    return 0


def auth(user: str):
    """The call metadata of `user`: `authorization: Bearer <SAGAFLOW_TOKEN_<USER>>`, if set."""
    token = os.environ.get(f"SAGAFLOW_TOKEN_{user.upper()}")
    return [("authorization", f"Bearer {token}")] if token else []


def wait_for(orders, order_pb2, user: str, order_id: str):
    """GetOrder with `wait`: blocks until the order is terminal (at most 30 s)."""
    reply = orders.GetOrder(
        order_pb2.GetOrderRequest(order_id=order_id, wait=duration_pb2.Duration(seconds=30)),
        timeout=40,
        metadata=auth(user),
    )
    return reply.order


def run(orders, order_pb2) -> None:
    status_name = order_pb2.OrderStatus.Name
    reason_name = order_pb2.FailureReason.Name

    # 1. alice: 89,000 - 10 % coupon (8,900) - 5,000 points = 75,100 KRW payable.
    request = order_pb2.PlaceOrderRequest(
        # A fresh request id per intended order; resending the same id returns the same order.
        request_id=f"python-example-{uuid.uuid4()}",
        user_id="alice",
        lines=[order_pb2.OrderLineRequest(sku="KB-001", quantity=1)],
        coupon_code="WELCOME-ALICE",
        points=5000,
        payment_method="tok_ok",
    )
    placed = orders.PlaceOrder(request, timeout=10, metadata=auth("alice")).order
    check("placed status", status_name(placed.status), "ORDER_STATUS_PENDING")
    # The discount is applied by saga step 2: until then payable is subtotal - points.
    check("placed payable", placed.payable, 84000)
    order = wait_for(orders, order_pb2, "alice", placed.order_id)
    check(
        "alice's order status (WELCOME-ALICE is single-use: run against fresh demo data)",
        status_name(order.status),
        "ORDER_STATUS_COMPLETED",
    )
    check("lines", [(l.sku, l.quantity, l.unit_price) for l in order.lines], [("KB-001", 1, 89000)])
    check("subtotal", order.subtotal, 89000)
    check("discount", order.discount, 8900)
    check("points", order.points, 5000)
    check("payable", order.payable, 75100)
    check("saga id", order.saga_id, order.order_id)
    print(
        f"completed {order.order_id}: subtotal {order.subtotal} discount {order.discount} "
        f"points {order.points} payable {order.payable}"
    )

    # 2. bob: the card is declined at capture; everything is compensated.
    failed = orders.PlaceOrder(
        order_pb2.PlaceOrderRequest(
            request_id=f"python-example-{uuid.uuid4()}",
            user_id="bob",
            lines=[order_pb2.OrderLineRequest(sku="MS-001", quantity=1)],
            coupon_code="WELCOME-BOB",
            points=1000,
            payment_method="tok_capture_decline",
        ),
        timeout=10,
        metadata=auth("bob"),
    ).order
    failed = wait_for(orders, order_pb2, "bob", failed.order_id)
    check("bob's order status", status_name(failed.status), "ORDER_STATUS_FAILED")
    check("failure reason", reason_name(failed.failure_reason), "FAILURE_REASON_PAYMENT_DECLINED")
    check("discount after failure", failed.discount, 0)
    check("payable after failure", failed.payable, 28000)
    print(f"failed {failed.order_id}: {reason_name(failed.failure_reason)}")

    # 3a. The same request id with another request: ALREADY_EXISTS + ErrorInfo.
    reused = order_pb2.PlaceOrderRequest()
    reused.CopyFrom(request)
    reused.lines[0].quantity = 2
    err = rpc_error(lambda: orders.PlaceOrder(reused, timeout=10, metadata=auth("alice")))
    check("reused request id code", err.code(), grpc.StatusCode.ALREADY_EXISTS)
    info = detail(err, error_details_pb2.ErrorInfo)
    check("ErrorInfo reason", info.reason, "IDEMPOTENCY_KEY_REUSED")
    check("ErrorInfo domain", info.domain, "sagaflow")
    print(f"reused request id: {err.code().name} reason {info.reason} domain {info.domain}")

    # 3b. A payment method the deployment does not accept: INVALID_ARGUMENT + BadRequest.
    bad = order_pb2.PlaceOrderRequest()
    bad.CopyFrom(request)
    bad.request_id = f"python-example-{uuid.uuid4()}"
    bad.payment_method = "tok_unknown"
    err = rpc_error(lambda: orders.PlaceOrder(bad, timeout=10, metadata=auth("alice")))
    check("unknown payment method code", err.code(), grpc.StatusCode.INVALID_ARGUMENT)
    fields = [v.field for v in detail(err, error_details_pb2.BadRequest).field_violations]
    check("BadRequest fields", fields, ["payment_method"])
    print(f"unknown payment method: {err.code().name} fields {','.join(fields)}")


def rpc_error(call) -> grpc.RpcError:
    """The error `call` raises; a success is a mismatch."""
    try:
        reply = call()
    except grpc.RpcError as err:
        return err
    raise Mismatch(f"expected an error, got {reply}")


def detail(err: grpc.RpcError, kind):
    """The first detail of type `kind` in the google.rpc.Status of `err`."""
    status = rpc_status.from_call(err)
    if status is None:
        raise Mismatch(f"{err.code().name} carries no google.rpc.Status details")
    for any_detail in status.details:
        if any_detail.Is(kind.DESCRIPTOR):
            message = kind()
            any_detail.Unpack(message)
            return message
    raise Mismatch(f"{err.code().name} has no {kind.DESCRIPTOR.full_name} detail")


if __name__ == "__main__":
    sys.exit(main())
