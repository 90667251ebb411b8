# rds-iam-sidecar container image: a release build on the pinned toolchain, copied into a
# distroless image (glibc + CA certificates, no shell) that runs as a non-root user.
#
#   docker build -t rds-iam-sidecar .
#   docker run --rm -p 127.0.0.1:5432:5432 -e RDS_IAM_SIDECAR_LISTEN=0.0.0.0:5432 \
#     -e RDS_IAM_SIDECAR_ALLOW_UNAUTHENTICATED_CLIENTS=true \
#     -e RDS_IAM_SIDECAR_UPSTREAM=mydb.proxy-abc123.us-east-1.rds.amazonaws.com:5432 rds-iam-sidecar

# ---- build -------------------------------------------------------------------------------
# The image tag is the toolchain pin; keep it in step with rust-toolchain.toml.
FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Dependencies first: build them against stub sources so this layer is cached until
# Cargo.toml or Cargo.lock change. The bench is declared in Cargo.toml, so it needs a stub too.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/forwarding.rs \
 && cargo build --release --locked \
 && rm -rf src benches \
      target/release/rds-iam-sidecar* \
      target/release/deps/rds_iam_sidecar-* \
      target/release/deps/librds_iam_sidecar-* \
      target/release/.fingerprint/rds-iam-sidecar-*

# The real sources. `touch` makes sure cargo sees them as newer than the stub build.
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && ./target/release/rds-iam-sidecar --version

# ---- runtime -----------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/rds-iam-sidecar /usr/local/bin/rds-iam-sidecar
USER nonroot

# The default listener is 127.0.0.1:5432: right for an ECS task in awsvpc mode, where all
# containers of the task share localhost, and nothing outside the task can reach it. With
# bridge networking or `docker run -p`, set RDS_IAM_SIDECAR_LISTEN=0.0.0.0:5432 and either
# RDS_IAM_SIDECAR_CLIENT_AUTH=scram-sha-256 (with RDS_IAM_SIDECAR_CLIENT_PASSWORD) or, when the
# port is unreachable from other hosts, RDS_IAM_SIDECAR_ALLOW_UNAUTHENTICATED_CLIENTS=true: a
# listener beyond loopback without client authentication refuses to start.
EXPOSE 5432
# The admin endpoint (/metrics, /readyz, ...) listens on 127.0.0.1:9090 unless
# RDS_IAM_SIDECAR_ADMIN_LISTEN says otherwise (0.0.0.0:9090 for a Prometheus outside the task).
EXPOSE 9090

# No shell and no curl in this image: the binary checks itself. `healthcheck --live` asks the
# admin endpoint's /livez (it reads RDS_IAM_SIDECAR_ADMIN_LISTEN like the sidecar does) and
# exits 0 or 1 with the reason on one line, within 4 s (below the check's own timeout). Liveness,
# not readiness: an orchestrator replaces a container whose check fails, and an upstream outage
# would fail every sidecar's readiness at once. ECS ignores this and uses the task definition's
# healthCheck (see config/ecs-task-definition.json), which runs the same command.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/rds-iam-sidecar", "healthcheck", "--live", "--timeout", "4s"]

ENTRYPOINT ["/usr/local/bin/rds-iam-sidecar"]
# Arguments given to `docker run` replace `run`; they may be `run` flags directly
# (e.g. `--upstream … --log-format json`) or another subcommand (`token --host … --user …`).
CMD ["run"]
