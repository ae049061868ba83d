# syntax=docker/dockerfile:1
#
# trafficmirror in a small image: built with the official Rust image, run from
# distroless (glibc, CA certificates, no shell) as the unprivileged "nonroot" user.
#
#   docker build -t trafficmirror .
#   docker run --rm -p 8080:8080 -e TRAFFICMIRROR_MAIN=http://app:8888 \
#     -e TRAFFICMIRROR_TARGETS_ADDRESS=:8081 trafficmirror
#
# Settings come from TRAFFICMIRROR_* variables, flags after the image name, or a
# config file mounted at /etc/trafficmirror/trafficmirror.yaml (the working directory).
# See docs/packaging.md, also for health probes: the final image has no shell or curl,
# so there is no HEALTHCHECK; use a TCP probe on the listen port.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# What `trafficmirror --version` names (build.rs): the build context has no .git, so the
# commit comes as a build argument (the release workflow passes it); the build date is
# SOURCE_DATE_EPOCH's when given, else today.
ARG TRAFFICMIRROR_BUILD_COMMIT=unknown
ARG SOURCE_DATE_EPOCH
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# The cache mounts keep downloaded crates and compiled dependencies between builds
# (BuildKit); the binary is copied out because the target mount is not in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trafficmirror \
    && cp target/release/trafficmirror /trafficmirror

# Same Debian release as the build stage, so the glibc the binary links against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /trafficmirror /usr/local/bin/trafficmirror
WORKDIR /etc/trafficmirror
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/trafficmirror"]
