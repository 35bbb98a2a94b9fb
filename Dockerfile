# syntax=docker/dockerfile:1
# Multi-stage build: compile both binaries, then copy them into a slim image
# that runs as an unprivileged user.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY api api
COPY worker worker
COPY tests tests
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p clicknback-api -p clicknback-worker \
    && mkdir -p /out && cp target/release/clicknback-api target/release/clicknback-worker /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin clicknback
COPY --from=build /out/clicknback-api /out/clicknback-worker /usr/local/bin/
USER 10001:10001
ENV APP_ENV=production API_ADDR=0.0.0.0:8080 WORKER_ADDR=0.0.0.0:8081
EXPOSE 8080 8081
CMD ["clicknback-api", "serve"]
