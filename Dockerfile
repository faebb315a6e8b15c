# syntax=docker/dockerfile:1
#
# Dropzone container image: one image, both binaries.
#   dropzone       the SFTP/SCP server (the default command)
#   dropzone-eaas  the reference key service (compose.yaml runs it as a
#                  second service from this same image)
# Built with every cargo feature (pam, pkcs11). See docs/CONTAINERS.md.
#
#   docker build -t dropzone .          # or: docker compose build

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build stage: compilers and -dev packages stay here -------------------
FROM ${RUST_IMAGE} AS build
# libpam0g-dev and libclang-dev: the pam feature (pam-sys runs bindgen);
# make: jemalloc, the server's allocator (tikv-jemalloc-sys).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpam0g-dev libclang-dev pkg-config make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# No debug info in the image's binaries: Cargo.toml's release profile keeps
# line tables (for local profiling), which would add about 115 MB here.
# Symbols stay, so a backtrace still names its functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features pam,pkcs11 --bins \
 && mkdir -p /out \
 && cp target/release/dropzone target/release/dropzone-eaas /out/

# --- runtime stage: the binaries and their run-time libraries only ---------
FROM ${RUNTIME_IMAGE}
# libpam0g, libpam-modules: PAM logins (auth.pam = true);
# ca-certificates: an https:// key service; curl: the key service's health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libpam0g libpam-modules \
 && rm -rf /var/lib/apt/lists/*
# The unprivileged user both services run as (unless PAM is on: PAM reads
# /etc/shadow, so the dropzone service then runs as root; see the docs).
# The state directories are created here, owned by it, so that named
# volumes mounted on them start with the right owner.
RUN groupadd --gid 10001 dropzone \
 && useradd --uid 10001 --gid dropzone --no-log-init --no-create-home \
        --home-dir /var/lib/dropzone --shell /usr/sbin/nologin dropzone \
 && install -d -o dropzone -g dropzone -m 0750 \
        /var/lib/dropzone /var/lib/dropzone/data /var/lib/dropzone/users /var/lib/dropzone-eaas \
 && install -d -o dropzone -g dropzone -m 0700 \
        /var/lib/dropzone/host_keys /var/lib/dropzone/keks /var/lib/dropzone-eaas/keys
COPY --from=build /out/dropzone /out/dropzone-eaas /usr/local/bin/
# Default configuration (compose.yaml mounts config/container/ over it).
COPY config/container/ /etc/dropzone/
# The PAM service `dropzone` (auth.pam = true).
COPY config/pam.d/dropzone /etc/pam.d/dropzone
ENV DROPZONE_CONFIG=/etc/dropzone/dropzone.toml \
    DROPZONE_EAAS_CONFIG=/etc/dropzone/eaas.toml \
    RUST_LOG=info
WORKDIR /var/lib/dropzone
USER 10001:10001
# 2022: SSH/SFTP (dropzone); 8443: the key service (dropzone-eaas).
EXPOSE 2022 8443
# For the dropzone server; compose.yaml gives the key service its own check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dropzone", "healthcheck", "--timeout", "5"]
CMD ["dropzone", "serve"]
