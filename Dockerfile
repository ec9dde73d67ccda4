# metacache container image.
#   docker build -t metacache:0.1.0 .
# Build stage: the official Rust toolchain image. rdkafka builds librdkafka from its
# bundled source with ./configure + make, linking OpenSSL and zlib (see scripts/setup.sh).
FROM rust:1.95-bookworm AS build
# Debian package versions are not pinned (DL3008): bookworm's security updates replace
# them, and a pinned version vanishes from the archive.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc make pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
COPY crates/contract/Cargo.toml crates/contract/
COPY crates/client/Cargo.toml crates/client/
COPY crates/embedded/Cargo.toml crates/embedded/
RUN mkdir src crates/contract/src crates/client/src crates/embedded/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs crates/contract/src/lib.rs crates/client/src/lib.rs crates/embedded/src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src crates/*/src

# The real sources (crates/ holds the workspace's library crates; examples/ the demo's
# events, compiled into the binary). Touch the crate roots so cargo rebuilds them rather
# than trusting the dummies' outputs.
COPY crates ./crates
COPY src ./src
COPY examples ./examples
RUN touch src/main.rs src/lib.rs crates/*/src/lib.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/metacache /out/metacache

# Runtime stage: Debian slim with only what the binary links at run time (OpenSSL 3 and
# zlib, for librdkafka's TLS and compression) and the CA bundle for TLS to Kafka and Redis.
FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="metacache" \
      org.opencontainers.image.description="Keeps Redis populated from Kafka: device metadata and metric catalogs, validated, pipelined, at-least-once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/metacache"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 metacache \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin metacache
COPY --from=build /out/metacache /usr/local/bin/metacache

# Numeric user, so Kubernetes' runAsNonRoot can check it. The daemon writes no files:
# the root filesystem can be read-only (mount an emptyDir at /tmp if anything needs one).
USER 10001:10001
# Settings: METACACHE__SECTION__KEY variables, or a TOML file named by METACACHE_CONFIG or
# `run --config FILE`. The working directory is /, so no config/default.toml is picked up.
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["metacache"]
CMD ["run"]
