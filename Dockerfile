# relay-server in a container: built on Debian 12 exactly as the quick start builds it
# (scripts/deps.sh + scripts/build.sh), run as a non-root user with its data in a volume.
#   docker build -t relay-station .          (or: docker compose build)
#   docker run -p 8000:8000 -e UPSTREAM_API_KEY=sk-ant-... -v relay-data:/data relay-station

FROM debian:12-slim AS build
WORKDIR /src
COPY scripts/deps.sh scripts/deps.sh
RUN bash scripts/deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN bash scripts/build.sh /build \
 && install -D -m 0755 /build/relay-server/relay-server /out/usr/local/bin/relay-server \
 && bash scripts/runtime-packages.sh /out/usr/local/bin/relay-server > /out/runtime-packages.txt

FROM debian:12-slim
# The runtime packages are the ones that own the libraries the binary links (ldd, above),
# plus curl for the health check and the CA certificates for https://api.anthropic.com.
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates curl $(cat /tmp/runtime-packages.txt) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin relay \
 && install -d -o relay -g relay -m 0700 /data
COPY --from=build /out/usr/local/bin/relay-server /usr/local/bin/relay-server

ENV RELAY_LISTEN=0.0.0.0:8000 \
    RELAY_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER relay
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["relay-server"]
CMD ["serve"]
