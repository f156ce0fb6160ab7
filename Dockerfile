# pullwatch container image. Build: docker build -t pullwatch .
# The build stage runs the same steps as CI: protobuf-compiler, clang and libbpf-dev from Debian
# (the kernel tap's BPF programs, compiled by build.rs), `cargo build --release --locked`.

FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler clang libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole context minus .dockerignore: everything Cargo.toml names (benches, examples, tests)
# is there. tests/e2e/deploy.rs builds exactly this context, offline, in every CI run.
COPY . .
ARG PULLWATCH_REVISION=unknown
ENV PULLWATCH_REVISION=${PULLWATCH_REVISION}
# A missing clang is a build error here, not an image without the tap.
ENV PULLWATCH_REQUIRE_BPF=1
RUN cargo build --release --locked --bin pullwatch \
 && strip target/release/pullwatch

# distroless/cc: glibc and CA certificates, no shell or package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG PULLWATCH_REVISION=unknown
LABEL org.opencontainers.image.title="pullwatch" \
      org.opencontainers.image.description="Times and classifies every container image pull on a Kubernetes node, for Prometheus" \
      org.opencontainers.image.source="https://github.com/pullwatch/pullwatch" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${PULLWATCH_REVISION}"
COPY --from=build /src/target/release/pullwatch /usr/local/bin/pullwatch
# Non-root by default. Reading the runtime socket (root:root 0660 on most hosts) needs uid 0 or
# the socket's group: the DaemonSet sets runAsUser accordingly and drops all capabilities.
USER 65532:65532
EXPOSE 9798
ENTRYPOINT ["pullwatch"]
CMD ["run"]
