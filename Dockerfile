# The agent alone: one static musl binary, no shell, no libc. Its default is ENGINE mode: a scratch
# image has no CLI, and on balena the `io.balena.features.balena-socket` label hands it the engine socket
# (and DOCKER_HOST, which the agent follows). Everything else is configured with STATS_* and MQTT_*
# environment variables (README.md, Configuration), or with config files mounted on /config.
#
# Build with `make image PLATFORM=linux/arm64` (or linux/arm/v7, linux/arm/v6, linux/amd64), which first
# puts the binary for that platform in dist/<TARGETARCH>[/<TARGETVARIANT>]/. buildx sets TARGETARCH and
# TARGETVARIANT from --platform; the classic builder needs them as --build-arg (make image does that), or
# takes the host's binary from dist/host/.
FROM scratch
# The defaults that differ from the agent's built-in ones: "mode": "ENGINE", and "report": "on_change"
# (a fleet is where bytes cost money). They are a file, not ENV lines, so that a STATS_MODE or
# STATS_REPORT variable still wins over them and a config directory mounted on /config replaces them (an
# ENV default would override the mounted file's keys). WORKDIR / makes the agent's
# `config/` resolve to /config.
# (It comes before the ARGs on purpose: the classic builder of Docker 20.10 records an ARG step right
# after FROM scratch as the host's platform, and a later step then fails for any other --platform.)
COPY config/image/balena_stats_collector.config.json /config/balena_stats_collector.config.json
# And "spool_dir": "/data": messages that cannot be delivered are kept on the volume mounted there (the
# fleet compose file's named volume); without one, a warning at start, and memory only.
COPY config/image/mqtt.config.json /config/mqtt.config.json
ARG TARGETARCH
ARG TARGETVARIANT
# Without TARGETARCH (the classic builder, which docker-compose uses on a plain Docker host), the binary
# for the machine that ran `make host` or `make dist`: dist/host/.
COPY dist/${TARGETARCH:-host}/${TARGETVARIANT}/balena-multi-container-telemetry /balena-multi-container-telemetry
WORKDIR /
# nobody:nogroup: enough for FILE mode, which only reads the mounted stats file. The engine socket
# belongs to root, so ENGINE mode needs `user: "0"` in the compose file (or the socket's group): see
# docker-compose.yaml.
USER 65534:65534
ENTRYPOINT ["/balena-multi-container-telemetry"]
