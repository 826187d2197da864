# volbak's image: the static binary and CA certificates, nothing else.
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
