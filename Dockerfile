# pod-agent image: the agent next to read-only data, with the sandbox's tools installed.
#
#   docker build -t pod-agent .                                  # CPU torch from PyPI
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#                --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 -t pod-agent:cuda .
#   (a CUDA base needs python3 + python3-venv; the RUN below installs them when missing)
# Offline: put wheels (all dependencies incl. torch, setuptools, wheel) in ./wheelhouse and
# the build installs with --no-index --find-links; .ci/docker builds exactly that way.
# Run flags for each sandbox level: systemd/README.md ("Docker").

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
# bubblewrap for namespaces, libseccomp2 for the sandbox's syscall filter.
RUN if ! command -v bwrap >/dev/null || ! command -v python3 >/dev/null \
        || ! python3 -c "import venv, ensurepip" 2>/dev/null || ! ldconfig -p | grep -q libseccomp.so.2; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            bubblewrap libseccomp2 ca-certificates \
            $(command -v python3 >/dev/null || echo python3) \
            $(python3 -c "import venv, ensurepip" 2>/dev/null || echo python3-venv) \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM base AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# pyproject.toml is always there, so the wildcard may match nothing without failing.
COPY pyproject.toml wheelhouse* /tmp/wheelhouse/
RUN python3 -m venv /opt/pod-agent/venv \
    && if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
        /opt/pod-agent/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse /tmp/wheelhouse/*.whl; \
    else \
        /opt/pod-agent/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch \
        && /opt/pod-agent/venv/bin/pip install --no-cache-dir setuptools wheel; \
    fi
# The agent's own code last: editing it does not invalidate the dependency layer above.
COPY pyproject.toml README.md /src/
COPY pod_agent /src/pod_agent
RUN if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
        /opt/pod-agent/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse --no-build-isolation /src; \
    else \
        /opt/pod-agent/venv/bin/pip install --no-cache-dir --no-build-isolation /src; \
    fi \
    && /opt/pod-agent/venv/bin/pod-agent --version \
    && chmod -R a+rX,go-w /opt/pod-agent/venv

FROM base
# The agent's uid, and the state and config locations it expects. The venv is root-owned and
# world-readable: the sandboxed worker (same uid as the agent, in its own namespaces) imports
# from it but neither of them can change it.
RUN groupadd --system --gid 10001 pod-agent \
    && useradd --system --no-log-init --uid 10001 --gid pod-agent --home-dir /var/lib/pod-agent --shell /usr/sbin/nologin pod-agent \
    && mkdir -p /var/lib/pod-agent /etc/pod-agent /data \
    && chown pod-agent:pod-agent /var/lib/pod-agent && chmod 0700 /var/lib/pod-agent
# Permissions were set in the build stage: a chmod here would copy the whole venv into a new layer.
COPY --from=build /opt/pod-agent/venv /opt/pod-agent/venv

ENV PATH=/opt/pod-agent/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    POD_AGENT_POD__STATE_DIR=/var/lib/pod-agent \
    POD_AGENT_OPS__HEALTH_HOST=127.0.0.1 \
    POD_AGENT_OPS__HEALTH_PORT=8701
VOLUME ["/var/lib/pod-agent"]
USER pod-agent
WORKDIR /var/lib/pod-agent
# /healthz is bound to 127.0.0.1 inside the container; the check runs there too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POD_AGENT_OPS__HEALTH_PORT', '8701'), timeout=4).status == 200 else 1)"]
ENTRYPOINT ["pod-agent"]
CMD ["run", "--config", "/etc/pod-agent/pod.toml"]
