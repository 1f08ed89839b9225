# berth itself in a container (see compose.yaml for berth + PostgreSQL + Redis).
#
# Built by scripts/build-images.sh from build/wheels (deps/: the dependencies of
# berth[all] as wheels built on the host; project/: berth's wheel) on the debootstrap'ed
# Debian Python base. By hand, after the script made the wheels once:
#
#   DOCKER_BUILDKIT=0 docker build -f docker/berth.Dockerfile -t berth:local build/wheels
#
# For docker workspaces, mount the engine's socket (/var/run/docker.sock) and put berth on
# the workspaces' network (BERTH_DOCKER_NETWORK, default "berth"): berth then reaches
# each agent at http://ws-<id[:12]>:8000, and agents reach berth at BERTH_PUBLIC_URL.
ARG BASE=berth-python-base:local

FROM ${BASE} AS deps
# The dependencies, in a venv of their own: reused while only berth's own code changes.
COPY deps /wheels/deps
RUN python3 -m venv /opt/berth \
 && /opt/berth/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check /wheels/deps/*.whl

FROM ${BASE}
COPY --from=deps /opt/berth /opt/berth
RUN mkdir -p /data
ENV PATH=/opt/berth/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    OTEL_INSTRUMENTATION_A2A_SDK_ENABLED=false \
    BERTH_DATA_DIR=/data \
    BERTH_IN_DOCKER=true
# berth itself last: a small layer.
COPY project /tmp/project
RUN pip install -q --no-index --no-cache-dir --disable-pip-version-check --no-deps /tmp/project/*.whl \
 && pip check && rm -rf /tmp/project
WORKDIR /data
VOLUME /data
EXPOSE 8080
# Runs as root: it talks to the Docker socket when docker workspaces are used.
CMD ["berth", "serve", "--host", "0.0.0.0"]
