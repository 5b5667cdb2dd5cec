# Built by deploy/build-images.sh from binaries made on the host: no base image, nothing pulled.
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 state/ /state/
# Mount point of the TLS override's certificates (docker-compose.tls.yml), owned by the user.
COPY --chown=10001:10001 pki/ /pki/
USER 10001:10001
WORKDIR /state
ENV SHOAL_LISTEN=0.0.0.0:50051 SHOAL_STATE_DIR=/state/db SHOAL_OUT=/state/runs
# glibc maps buffers of 1 MiB and more on their own, so a freed model-sized buffer goes back to the
# system instead of staying in the heap: the 2048x2048 MLP's rounds peak at 224 MB instead of
# 331 MB (docs/guide/scale.md).
ENV MALLOC_MMAP_THRESHOLD_=1048576
EXPOSE 50051
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/shoal-coordinator", "health", "--coordinator", "http://127.0.0.1:50051"]
# The binary is PID 1 and handles SIGTERM itself: jobs stop, client streams close, state is kept.
ENTRYPOINT ["/usr/local/bin/shoal-coordinator"]
CMD ["serve"]
