# volbak's image: the static binary and CA certificates, nothing else. It is
# the CLI (docker run --rm volbak backup ...) and the scheduler sidecar
# (command: ["run"]): its HEALTHCHECK asks the sidecar's health file, in
# /var/lib/volbak (mount a volume there: it also records the containers the
# sidecar stops, to start them again after a crash). The helper containers
# are made from this same binary, by volbak itself.
#
# With a registry:  docker build -t volbak .
# Without one (only FROM scratch works), from a binary built on this host:
#   scripts/image.sh            (builds bin/volbak, then --target prebuilt)

# Listed first so that the classic builder, asked for this target, never
# reaches the stages that pull images.
FROM scratch AS prebuilt
COPY bin/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY bin/volbak /volbak
ENTRYPOINT ["/volbak"]
HEALTHCHECK --interval=1m --timeout=10s --start-period=30s CMD ["/volbak", "healthcheck"]

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/volbak ./cmd/volbak

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/volbak /volbak
ENTRYPOINT ["/volbak"]
HEALTHCHECK --interval=1m --timeout=10s --start-period=30s CMD ["/volbak", "healthcheck"]
