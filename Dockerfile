# Container image of this build of Atlantis: upstream Atlantis v0.47.1 with
# enhanced locking. See runatlantis.io/docs/enhanced-locking.md#container-image.
#
#   docker build -t atlantis-enhanced .
#   docker run -p 4141:4141 -v atlantis-data:/home/atlantis \
#     -e ATLANTIS_GH_USER=... -e ATLANTIS_GH_TOKEN=... atlantis-enhanced
#
# Arguments after the image name are `atlantis server` flags, for example
# `docker run atlantis-enhanced --dry-run --config-dump`. Needs BuildKit (the
# default builder since Docker 23) for --platform=$BUILDPLATFORM below.
#
# Terraform. By default the image holds no Terraform: as upstream Atlantis
# does, the server downloads the version in ATLANTIS_DEFAULT_TF_VERSION (set
# below from TERRAFORM_VERSION) into $ATLANTIS_DATA_DIR/bin in the background
# when it starts, and any other version a project asks for when it first
# needs it, from
# --tf-download-url (https://releases.hashicorp.com by default). Override the
# version at run time with -e ATLANTIS_DEFAULT_TF_VERSION=x.y.z.
# To bake the version into the image instead (no download at run time, e.g.
# for an air-gapped cluster), build with:
#
#   docker build --build-arg BAKE_TERRAFORM=true --build-arg TERRAFORM_VERSION=x.y.z .
#
# Not included, unlike upstream's image: OpenTofu, conftest and git-lfs.

ARG GO_VERSION=1.26
ARG DEBIAN_VERSION=trixie-slim
ARG TERRAFORM_VERSION=1.14.9

# --- Build the atlantis binary --------------------------------------------
# Runs on the build machine's platform and cross-compiles for the target:
# with CGO off the binary is static and needs no C toolchain.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS builder
ARG TARGETOS
ARG TARGETARCH
# Shown by `atlantis version`.
ARG ATLANTIS_VERSION=dev
ARG ATLANTIS_COMMIT=none
ARG ATLANTIS_DATE=unknown

WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# .dockerignore keeps local build output (bin/, .tools/) and .git out.
COPY . .
RUN CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-s -w -X main.version=${ATLANTIS_VERSION} -X main.commit=${ATLANTIS_COMMIT} -X main.date=${ATLANTIS_DATE}" \
      -o /out/atlantis .

# --- Optional: Terraform baked into the image -----------------------------
# Leaves /out empty unless BAKE_TERRAFORM=true. The zip is checked against
# HashiCorp's SHA256SUMS file from the same release (its GPG signature is not
# verified here).
FROM debian:${DEBIAN_VERSION} AS terraform
ARG TARGETARCH
ARG TERRAFORM_VERSION
ARG BAKE_TERRAFORM=false
SHELL ["/bin/sh", "-eu", "-c"]
RUN mkdir /out; \
    if [ "${BAKE_TERRAFORM}" = "true" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends ca-certificates curl unzip; \
      arch="${TARGETARCH:-amd64}"; \
      base="https://releases.hashicorp.com/terraform/${TERRAFORM_VERSION}"; \
      zip="terraform_${TERRAFORM_VERSION}_linux_${arch}.zip"; \
      cd /tmp; \
      curl -fsSLO "${base}/${zip}"; \
      curl -fsSLO "${base}/terraform_${TERRAFORM_VERSION}_SHA256SUMS"; \
      grep " ${zip}\$" "terraform_${TERRAFORM_VERSION}_SHA256SUMS" | sha256sum -c -; \
      unzip -q "${zip}" terraform -d /out; \
    fi

# --- Runtime ---------------------------------------------------------------
FROM debian:${DEBIAN_VERSION}
ARG TERRAFORM_VERSION

# git (and ssh for git@ module sources) to clone pull requests, CA
# certificates for the VCS, Redis TLS and Terraform downloads, and dumb-init
# as PID 1.
RUN apt-get update && \
    apt-get install -y --no-install-recommends ca-certificates dumb-init git openssh-client && \
    rm -rf /var/lib/apt/lists/*

# Non-root user. uid 100 / gid 1000 are the ids upstream's image uses, so a
# data volume written by an upstream container keeps working.
RUN groupadd --gid 1000 atlantis && \
    useradd --system --uid 100 --gid 1000 --create-home --home-dir /home/atlantis --shell /bin/bash atlantis

COPY --from=builder /out/atlantis /usr/local/bin/atlantis
COPY --from=terraform /out/ /usr/local/bin/

# The data dir holds clones, plans and the BoltDB file (atlantis.db). Mount a
# volume here; several replicas need a shared one, or upstream's S3 plan store.
ENV HOME=/home/atlantis \
    ATLANTIS_DATA_DIR=/home/atlantis \
    ATLANTIS_DEFAULT_TF_VERSION=${TERRAFORM_VERSION}
WORKDIR /home/atlantis
USER 100:1000

# Probes: GET /healthz (liveness, 200 while the process runs) and GET /readyz
# (readiness; with enhanced locking on it also checks the lock backend).
EXPOSE 4141

# --single-child: a stop signal goes to Atlantis only, which lets running
# Terraform finish instead of interrupting it directly.
ENTRYPOINT ["/usr/bin/dumb-init", "--single-child", "--", "/usr/local/bin/atlantis", "server"]
