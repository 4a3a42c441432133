# pod-agent image: the agent next to read-only data, with the sandbox's tools installed.
#
#   docker build -t pod-agent .                                  # CPU torch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#                --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 -t pod-agent:cuda .
#   (a CUDA base needs python3 + python3-venv; the first RUN installs them when missing)
# Offline: put wheels (every dependency incl. torch, setuptools and wheel) in ./wheelhouse and
# the build installs with --no-index --find-links; .ci/docker builds exactly that way.
# Run flags for each sandbox level: deploy/README.md.

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

# The wheelhouse (if any) lives only in this stage and is bind-mounted below, so the image
# neither carries it nor copies the installed venv between stages. pyproject.toml is always
# there, so the wildcard may match nothing without failing.
FROM base AS wheels
COPY pyproject.toml wheelhouse* /wheelhouse/
# Bind mounts do not enter every engine's cache key; this file does, via the COPY below.
RUN (cat /wheelhouse/pyproject.toml; ls -l /wheelhouse) | sha256sum >/wheelhouse.key

FROM base
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The agent's uid, and the state and config locations it expects.
RUN groupadd --system --gid 10001 pod-agent \
    && useradd --system --no-log-init --uid 10001 --gid pod-agent --home-dir /var/lib/pod-agent \
        --shell /usr/sbin/nologin pod-agent \
    && mkdir -p /var/lib/pod-agent /etc/pod-agent /data \
    && chown pod-agent:pod-agent /var/lib/pod-agent && chmod 0700 /var/lib/pod-agent
# Dependencies first, the agent's own code last: editing it leaves this big layer cached.
# The venv is root-owned and world-readable (umask 022): the sandboxed worker imports from
# it, and neither it nor the agent can change it.
COPY --from=wheels /wheelhouse.key /tmp/wheelhouse.key
RUN --mount=type=bind,from=wheels,source=/wheelhouse,target=/tmp/wheelhouse \
    umask 022 && python3 -m venv /opt/pod-agent/venv \
    && if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
        /opt/pod-agent/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse /tmp/wheelhouse/*.whl; \
    else \
        python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/wheelhouse/pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
        && /opt/pod-agent/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch \
        && /opt/pod-agent/venv/bin/pip install --no-cache-dir setuptools wheel -r /tmp/requirements.txt \
        && rm /tmp/requirements.txt; \
    fi
COPY pyproject.toml README.md /tmp/src/
COPY pod_agent /tmp/src/pod_agent
RUN umask 022 \
    && /opt/pod-agent/venv/bin/pip install --no-cache-dir --no-deps --no-index --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && /opt/pod-agent/venv/bin/pod-agent --version

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
