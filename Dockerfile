# AetherStore image: one image for the master, the datanodes and the S3 gateway; the
# command picks the role (`master`, the default, `datanode` or `s3`). The binary is built
# on the host first:
#
#   deploy/build-static.sh
#   docker build -t aetherstore:latest .
#
# A binary built again needs the image built again: `docker-compose up -d --build`.
#
# BASE_IMAGE is any Debian-like image with bash and useradd: debian:bookworm-slim in the
# real world; the deploy test passes an image it made itself with debootstrap, since no
# image can be pulled on the project's machines. The binary is statically linked, so
# the base only adds a shell for the health check and the usual /etc files.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG AETHER_BINARY=target/deploy/aether
ARG AETHER_UID=10001

RUN groupadd --system --gid "${AETHER_UID}" aether \
    && useradd --system --uid "${AETHER_UID}" --gid aether --no-create-home \
        --home-dir /var/lib/aether --shell /usr/sbin/nologin aether \
    && mkdir -p /var/lib/aether \
    && chown aether:aether /var/lib/aether \
    && chmod 0750 /var/lib/aether

# The binary is copied through a wildcard, so that a fresh clone that has not built it
# yet reaches the check below, which says what to run, instead of "file not found".
COPY deploy/docker/healthcheck.sh ${AETHER_BINARY}* /tmp/aether-build/
RUN binary="/tmp/aether-build/$(basename "${AETHER_BINARY}")"; \
    if [ ! -f "$binary" ]; then \
        echo "error: ${AETHER_BINARY} does not exist. Build it first: deploy/build-static.sh," \
             "then build the image again (docker-compose up -d --build, or docker build)." >&2; \
        exit 1; \
    fi \
    && install -m 0755 "$binary" /usr/local/bin/aether \
    && install -m 0755 /tmp/aether-build/healthcheck.sh /usr/local/bin/aether-healthcheck \
    && rm -rf /tmp/aether-build

# The master and the datanodes keep their data in the volume: the master's database or
# the datanode's objects, one role per container. The S3 gateway keeps none.
ENV AETHER_DATA=/var/lib/aether
VOLUME ["/var/lib/aether"]
WORKDIR /var/lib/aether
USER aether:aether
EXPOSE 42100 42101 9000

HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/aether-healthcheck"]

# aether itself is PID 1: it stops cleanly on SIGTERM (docker stop).
ENTRYPOINT ["/usr/local/bin/aether"]
CMD ["master"]
