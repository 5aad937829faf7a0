# syntax=docker/dockerfile:1
# One image per binary: docker build --target scheduler|device-plugin|shard-server .
# The local cluster (e2e/cluster) builds the same images without a Docker
# engine: the binary at /, /etc/passwd with the nonroot user, a writable
# /tmp, user 65532 (root for the device plugin), entrypoint the binary.

ARG GO_VERSION=1.26
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -o /out/ ./cmd/tessera-scheduler ./cmd/tessera-shard-server && \
    CGO_ENABLED=1 go build -trimpath -o /out/ ./cmd/tessera-device-plugin
RUN mkdir -p /rootfs/etc /rootfs/tmp && chmod 1777 /rootfs/tmp && \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /rootfs/etc/passwd

FROM scratch AS scheduler
COPY --from=build /rootfs/ /
COPY --from=build /out/tessera-scheduler /tessera-scheduler
USER 65532
ENTRYPOINT ["/tessera-scheduler"]

FROM scratch AS shard-server
COPY --from=build /rootfs/ /
COPY --from=build /out/tessera-shard-server /tessera-shard-server
USER 65532
ENTRYPOINT ["/tessera-shard-server"]

# The device plugin links glibc (cgo) to dlopen libnvidia-ml.so.1, which the
# NVIDIA container toolkit mounts from the host. It runs as root: it serves
# a socket in the kubelet's root-owned device-plugins directory.
FROM gcr.io/distroless/base-debian12 AS device-plugin
COPY --from=build /out/tessera-device-plugin /tessera-device-plugin
USER 0
ENTRYPOINT ["/tessera-device-plugin"]
