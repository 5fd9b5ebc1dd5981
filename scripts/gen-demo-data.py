#!/usr/bin/env python3
"""Generates the shipped demo data (deterministic: seeded RNG).

- crates/cli/seed/demo.json: catalog, users with points, coupons (seeded once by `sagaflow dev`);
- crates/cli/examples/orders.jsonl: the sample orders `sagaflow demo` places (one PlaceOrderRequest
  as JSON per line, plus a "scenario" label saying what the order exercises).

Re-run after changing it: python3 scripts/gen-demo-data.py
"""
import json, random, os

rng = random.Random(20261129)
root = os.path.join(os.path.dirname(__file__), "..", "crates", "cli")

products = [
    ("KB-001", "Mechanical keyboard", 89000, 10000),
    ("MS-001", "Wireless mouse", 29000, 10000),
    ("MN-001", "27-inch monitor", 329000, 10000),
    ("HS-001", "Headset", 59000, 10000),
    ("CB-001", "USB-C cable", 9000, 10000),
    ("DK-001", "Docking station", 149000, 10000),
    ("WC-001", "Webcam", 79000, 10000),
    ("SP-001", "Speaker", 45000, 10000),
    ("LT-001", "Desk lamp", 39000, 10000),
    ("CH-001", "Office chair", 259000, 10000),
    ("LIM-001", "Limited edition keycaps", 120000, 5),
    ("SOLD-001", "Sold-out tablet", 499000, 0),
]
users = [f"user-{i:03d}" for i in range(1, 31)]
points = {u: 30000 for u in users}
points["user-poor"] = 1000
users_all = users + ["user-poor"]

FAR = 4102444800000      # 2100-01-01, unix ms
PAST = 1577836800000     # 2020-01-01, unix ms
coupons = []
orders = []

def coupon(code, user, amount=0, percent=0, min_order=0, max_discount=0, expires=FAR):
    coupons.append(dict(code=code, user_id=user, discount_amount=amount, discount_percent=percent,
                        min_order_amount=min_order, max_discount=max_discount, expires_at_ms=expires))
    return code

regular = [p[0] for p in products[:10]]

def lines(n=None):
    n = n or rng.randint(1, 3)
    skus = rng.sample(regular, n)
    return [dict(sku=s, quantity=rng.randint(1, 3)) for s in skus]

def order(scenario, user, ls, coupon_code=None, pts=0, pm="tok_ok"):
    o = dict(request_id=f"demo-{len(orders)+1:04d}", user_id=user, lines=ls, points=pts,
             payment_method=pm, scenario=scenario)
    if coupon_code:
        o["coupon_code"] = coupon_code
    orders.append(o)

for i in range(90):
    order("plain", rng.choice(users), lines())
for i in range(30):
    u = rng.choice(users)
    c = coupon(f"PCT10-{i:03d}", u, percent=10, max_discount=20000) if i % 2 == 0 else \
        coupon(f"FLAT5K-{i:03d}", u, amount=5000, min_order=10000)
    order("coupon", u, lines(), coupon_code=c)
for i in range(20):
    u = users[i % len(users)]
    order("points", u, lines(), pts=rng.choice([1000, 2000, 5000]))
for i in range(10):
    u = rng.choice(users)
    c = coupon(f"COMBO-{i:03d}", u, amount=3000)
    order("coupon+points", u, lines(), coupon_code=c, pts=1000)
for i in range(8):
    order("out of stock", rng.choice(users), lines(1) + [dict(sku="SOLD-001", quantity=1)])
for i in range(6):
    order("limited stock (5 units, some win)", rng.choice(users), [dict(sku="LIM-001", quantity=2)])
for i in range(6):
    u = rng.choice(users)
    c = coupon(f"EXPIRED-{i:03d}", u, amount=5000, expires=PAST)
    order("expired coupon", u, lines(), coupon_code=c)
for i in range(6):
    owner, user = rng.sample(users, 2)
    c = coupon(f"OTHERS-{i:03d}", owner, amount=5000)
    order("someone else's coupon", user, lines(), coupon_code=c)
for i in range(4):
    u = rng.choice(users)
    c = coupon(f"MIN-{i:03d}", u, amount=5000, min_order=10_000_000)
    order("coupon minimum not met", u, lines(), coupon_code=c)
for i in range(8):
    order("declined card", rng.choice(users), lines(), pm="tok_decline")
for i in range(8):
    u = rng.choice(users)
    c = coupon(f"CAPDEC-{i:03d}", u, amount=2000)
    order("capture declined (pivot fails: everything compensated)", u, lines(), coupon_code=c, pts=500,
          pm="tok_capture_decline")
for i in range(6):
    order("points above balance", "user-poor", [dict(sku="MN-001", quantity=1)], pts=5000)
for i in range(4):
    order("slow gateway (unknown outcome)", rng.choice(users), lines(1), pm="tok_slow")

# The README walkthrough's users and coupons (not used by the sample orders).
points["alice"] = 50000
points["bob"] = 20000
users_all += ["alice", "bob"]
coupon("WELCOME-ALICE", "alice", percent=10, max_discount=20000)
coupon("WELCOME-BOB", "bob", amount=3000, min_order=10000)

rng.shuffle(orders)
for i, o in enumerate(orders):
    o["request_id"] = f"demo-{i+1:04d}"

seed = dict(
    products=[dict(sku=s, name=n, unit_price=p, stock=st) for s, n, p, st in products],
    users=[dict(user_id=u, points=points[u]) for u in users_all],
    coupons=coupons,
)
with open(os.path.join(root, "seed", "demo.json"), "w") as f:
    json.dump(seed, f, indent=1)
    f.write("\n")
with open(os.path.join(root, "examples", "orders.jsonl"), "w") as f:
    for o in orders:
        f.write(json.dumps(o) + "\n")
print(f"{len(orders)} orders, {len(coupons)} coupons, {len(products)} products, {len(users_all)} users")
