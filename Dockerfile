# syntax=docker/dockerfile:1
# dynsig's image: built in a full Rust image, run from a slim Debian one as a non-root user.
#
#   docker build -t dynsig .
#   docker run --rm -p 8686:8686 dynsig run --brokers kafka:9092 --http-addr 0.0.0.0:8686
#
# Used by deploy/docker-compose.yml and deploy/k8s/. The bundled librdkafka is compiled from
# source by the build (configure/make: present in the rust image), so no system Kafka library
# is needed at run time.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target folder between builds (librdkafka alone takes
# minutes); the binary is copied out of the cached target folder before the layer ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dynsig \
    && install -m 0755 target/release/dynsig /usr/local/bin/dynsig

# The binary needs only libc, libm, libgcc_s and zlib, all in the slim base (librdkafka is
# linked in statically and built without TLS, so no OpenSSL or CA bundle either).
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin dynsig
COPY --from=build /usr/local/bin/dynsig /usr/local/bin/dynsig
COPY deploy/dynsig.example.toml /etc/dynsig/dynsig.toml
USER 10001:10001
EXPOSE 8686
ENTRYPOINT ["/usr/local/bin/dynsig"]
CMD ["run", "--config", "/etc/dynsig/dynsig.toml", "--http-addr", "0.0.0.0:8686"]
