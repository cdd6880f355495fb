# One image for the API, the worker and the migrations; Kubernetes chooses the role by the command
# (k8s/README.md). No CMD on purpose.
#
# debian:bookworm-slim rather than python:3.11-slim: Debian's python3 is the 3.11 the project requires,
# and the same base can be made offline with debootstrap (tests/image.sh does that where no registry is
# reachable).

# ---- build stage: a virtualenv with the service and its dependencies, no build tools left behind -----
FROM debian:bookworm-slim AS build

# Debian stable only takes fixes within a release: pinning exact versions would break the build at the
# next security update without making it more reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Only for builds whose way to PyPI needs an extra CA (a proxy): `--build-arg PIP_CERT=<bundle>` with the
# bundle mounted there (tests/image.sh does). Unset, pip trusts its own bundle. Not kept in the image.
ARG PIP_CERT
RUN python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone (with an empty package), so a code change keeps this layer.
COPY pyproject.toml README.md ./
RUN mkdir service && touch service/__init__.py \
    && /opt/venv/bin/pip install . \
    && rm -rf service build ./*.egg-info

# Then the code, installed (not editable) into the same virtualenv.
COPY service/ service/
RUN /opt/venv/bin/pip install --no-deps --force-reinstall . \
    && /opt/venv/bin/pip uninstall -y pip setuptools

# ---- runtime stage ------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# git and openssh-client: git sources (clones over https and ssh). No init process: Kubernetes runs the
# DESIGN's commands as they are, and the worker pod shares its process namespace, so the pause container
# reaps what Ansible leaves behind (k8s/README.md, graceful shutdown).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid so Kubernetes can check runAsNonRoot. HOME is /tmp, an emptyDir under a read-only root
# filesystem: Ansible keeps its local temp and ssh control sockets under ~/.ansible.
# WORK_DIR is world-writable like /tmp: runc gives a tmpfs mounted over it this directory's mode.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin ars \
    && install -d -m 1777 /var/lib/ars/work

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY alembic.ini ./
COPY migrations/ migrations/
COPY playbooks/ playbooks/
COPY collections/ collections/

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PLAYBOOKS_DIR=/app/playbooks \
    ANSIBLE_COLLECTIONS_PATH=/app/collections \
    WORK_DIR=/var/lib/ars/work \
    LOG_FORMAT=json

USER 10001:10001
EXPOSE 8000
