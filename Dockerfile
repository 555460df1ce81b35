# The agent alone: one static musl binary and its default configs, no shell, no libc.
# Build with `make image PLATFORM=linux/arm64` (or linux/arm/v7, linux/amd64), which first puts the binary
# for that platform in dist/<TARGETARCH>/. buildx sets TARGETARCH from --platform; the classic builder
# needs --build-arg TARGETARCH=arm64|arm|amd64.
FROM scratch
# The example configs as defaults; WORKDIR / makes the agent's `config/` resolve to /config. Mount your
# own directory over /config (or point CONFIG_DIR elsewhere) to configure it.
# (They come before the ARG on purpose: the classic builder of Docker 20.10 records an ARG step right
# after FROM scratch as the host's platform, and a later step then fails for any other --platform.)
COPY config/balena_stats_collector.example-config.json /config/balena_stats_collector.config.json
COPY config/mqtt.example-config.json /config/mqtt.config.json
ARG TARGETARCH
COPY dist/${TARGETARCH}/balena-multi-container-telemetry /balena-multi-container-telemetry
WORKDIR /
# nobody:nogroup. FILE mode only needs to read the mounted stats file.
USER 65534:65534
ENTRYPOINT ["/balena-multi-container-telemetry"]
