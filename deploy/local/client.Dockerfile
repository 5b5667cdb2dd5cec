# Built by deploy/build-images.sh from binaries made on the host: no base image, nothing pulled.
FROM scratch
COPY rootfs/ /
# Mount point of the TLS override's certificates (docker-compose.tls.yml), owned by the user.
COPY --chown=10001:10001 pki/ /pki/
USER 10001:10001
WORKDIR /tmp
# A client serves no port: its health is its connection, which it re-establishes by itself.
HEALTHCHECK NONE
# PID 1, handling SIGTERM itself: it finishes the task at hand and exits.
ENTRYPOINT ["/usr/local/bin/shoal-client"]
