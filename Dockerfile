# syntax=docker/dockerfile:1
#
# tether's container image: a root filesystem with the stripped `tether`
# binary and its deployment checker `tether-check` (run as `tether check`,
# e.g. by the Helm chart's test hook), the few shared libraries it loads (glibc, libstdc++, libgcc_s),
# `sleep` for the chart's exec preStop hook, the CA certificate bundle, and
# the non-root user 65532.
# No shell, no package manager. The journal goes on the volume
# /var/lib/tether; the root filesystem can be read-only (tether writes only to
# the journal, and /tmp if you mount one).
#
#   docker build -t ghcr.io/tether-proxy/tether:0.1.0 .      # BuildKit (Docker >= 23, buildah, podman)
#   docker run --rm -p 8080:8080 -p 9090:9090 -v tether-journal:/var/lib/tether \
#     -e TETHER_SERVER_UPSTREAM=ws://backend:9000 ghcr.io/tether-proxy/tether:0.1.0
#
# Without a Rust toolchain in the build, from a binary built on a Debian 12
# (glibc 2.36) host, this Dockerfile's `prebuilt` stage takes a root
# filesystem made by scripts/image-rootfs instead of compiling:
# scripts/check-image does that with buildah (see ROOTFS below).

# Which stage provides /rootfs: "build" (compile here) or "prebuilt" (a
# rootfs/ directory in the build context, made by scripts/image-rootfs).
ARG ROOTFS=build

# --- build: compile tether and assemble its root filesystem -----------------
FROM docker.io/library/rust:1-bookworm AS build
# RocksDB's bindings are generated at build time (bindgen needs libclang).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev binutils ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tether -p tether-check --bin tether --bin tether-check \
 && scripts/image-rootfs target/release/tether /rootfs target/release/tether-check

# --- prebuilt: a root filesystem made outside (scripts/image-rootfs) --------
FROM scratch AS prebuilt
COPY rootfs/ /rootfs/

FROM ${ROOTFS} AS rootfs

# --- the image ---------------------------------------------------------------
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=rootfs /rootfs/ /
# COPY does not keep owners: the journal directory belongs to the tether user
# (copying the contents of var/lib/ re-creates var/lib/tether with that owner).
COPY --from=rootfs --chown=65532:65532 /rootfs/var/lib/ /var/lib/
ENV PATH=/usr/local/bin
# tether binds its admin port to loopback unless asked; in a container the
# probes and Prometheus come from outside, so the image asks.
ENV TETHER_SERVER_ADMIN_LISTEN=0.0.0.0:9090
# tether's default journal.data_dir is ./tether-data: the journal lands on the
# volume without an environment variable that would override a config file.
WORKDIR /var/lib/tether
VOLUME ["/var/lib/tether"]
# Data port (server.listen) and admin port (/livez, /readyz, /metrics).
EXPOSE 8080/tcp 9090/tcp
USER 65532:65532
LABEL org.opencontainers.image.title="tether" \
      org.opencontainers.image.description="A resumable WebSocket proxy: sequence ids, a RocksDB journal and replay in front of an unmodified WebSocket backend" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/tether-proxy/tether" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["run"]
