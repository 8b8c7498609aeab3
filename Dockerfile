# smtp2gmail container image. Not built on the development machines (no Docker there): keep it
# conventional. Build: docker build -t smtp2gmail .
#
# Run with a config mounted at /etc/smtp2gmail/config.toml that listens on 0.0.0.0 (see
# contrib/docker-compose.yml and docs/deployment.md) and the spool on a volume:
#   docker run -v ./config.toml:/etc/smtp2gmail/config.toml:ro -v smtp2gmail:/var/lib/smtp2gmail \
#     -p 2525:2525 smtp2gmail

# Builder and runtime share one Debian release, so the binary's glibc matches.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# TLS is rustls: no OpenSSL headers needed.
RUN cargo build --release --locked --bin smtp2gmail

FROM debian:bookworm-slim
# ca-certificates for HTTPS to Google; curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/smtp2gmail \
        --shell /usr/sbin/nologin smtp2gmail \
    && install -d -o smtp2gmail -g smtp2gmail -m 0700 /var/lib/smtp2gmail \
    && install -d -m 0755 /etc/smtp2gmail
COPY --from=build /src/target/release/smtp2gmail /usr/local/bin/smtp2gmail

USER smtp2gmail
# The spool (queue.dir) and writable token files belong here; relative paths in the config
# resolve against it.
WORKDIR /var/lib/smtp2gmail
VOLUME /var/lib/smtp2gmail
# SMTP, and the HTTP endpoints (/healthz, /readyz, /metrics) when [http] listen = "0.0.0.0:9925".
EXPOSE 2525 9925

# Runs inside the container, so the default [http] listen = "127.0.0.1:9925" suffices.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:9925/healthz || exit 1

# SIGTERM drains open transactions for smtp.shutdown_grace (30s): stop with
# `docker stop -t 60` or compose's stop_grace_period so Docker does not SIGKILL first.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/smtp2gmail"]
CMD ["serve", "--config", "/etc/smtp2gmail/config.toml", "--log-format", "json"]
