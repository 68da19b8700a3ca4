# syntax=docker/dockerfile:1
#
# The worker as a static binary on distroless, running as non-root.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t pageviews .
#
# Pebble is pure Go, so the binary needs no cgo and no libc (CGO_ENABLED=0).
#
# Both base images are pinned by digest; Dependabot (the docker ecosystem)
# moves tag and digest together. The Go image is the toolchain of go.mod's
# `toolchain` line, the Go that CI tests (deploy/check/dockerfile_test.go).

FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm@sha256:9fdc884aacc3bec89b20ffc69f4bb369c78210e3e4f600387b5128b12c199f81 AS build
WORKDIR /src
# Modules first: this layer stays cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY cmd/ cmd/
COPY internal/ internal/
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pageviews ./cmd/pageviews
# The data directory, owned by the runtime user, so that a fresh volume
# mounted over it (or none at all) is writable.
RUN mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="pageviews" \
      org.opencontainers.image.description="Kafka stream-processing worker: the Faust page-view demo in Go" \
      org.opencontainers.image.url="https://github.com/gofaust/pageviews" \
      org.opencontainers.image.source="https://github.com/gofaust/pageviews" \
      org.opencontainers.image.documentation="https://github.com/gofaust/pageviews#readme" \
      org.opencontainers.image.vendor="gofaust" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /out/pageviews /usr/local/bin/pageviews
COPY --from=build --chown=65532:65532 /out/data /data
# nonroot:nonroot of the distroless image; numeric, so that Kubernetes'
# runAsNonRoot can check it without reading /etc/passwd.
USER 65532:65532
ENV DATA_DIR=/data \
    WEB_ADDR=:8088 \
    LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8088
ENTRYPOINT ["/usr/local/bin/pageviews"]
