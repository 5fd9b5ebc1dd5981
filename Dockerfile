# The sagaflow binary for the distributed deployment (compose.yaml). One image, every service:
# the container's command picks it (`sagaflow serve <service>`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# No features: fault injection (`fault-injection`, `failpoints`) is for test builds only, and this
# binary refuses SAGAFLOW_FAULTS and FAILPOINTS (docs/operations.md, "Fault injection (test builds
# only)"; scripts/check-release-faults.sh).
RUN cargo build --release --locked -p sagaflow-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sagaflow /usr/local/bin/sagaflow
USER 10001
ENTRYPOINT ["/usr/local/bin/sagaflow"]
