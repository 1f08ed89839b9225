# An agent image: the echo agent of CONTRACT §8, ready for berth's docker runtime.
#
# Built by scripts/build-images.sh (no registry needed): the build context is build/wheels,
# with deps/ (berth's dependencies as wheels, built on the host) and project/ (berth's own
# wheel); the base is Debian bookworm's Python 3.11 made with debootstrap
# (berth-python-base:local). By hand, after the script made the wheels once:
#
#   DOCKER_BUILDKIT=0 docker build -f docker/agent.Dockerfile -t berth-echo:local build/wheels
#
# Your own agent: copy this file, install your package next to berth, change CMD. The
# agent must listen on 0.0.0.0:$BERTH_PORT (8000) and keep its state in $BERTH_STATE_DIR.
ARG BASE=berth-python-base:local

FROM ${BASE} AS deps
# The dependencies, in a venv of their own: reused while only berth's own code changes.
COPY deps /wheels/deps
RUN python3 -m venv /opt/berth \
 && /opt/berth/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check /wheels/deps/*.whl

FROM ${BASE}
COPY --from=deps /opt/berth /opt/berth
# A non-root user; /state is its own, so a fresh named volume mounted there is too.
RUN echo 'agent:x:10001:10001:berth agent:/state:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'agent:x:10001:' >> /etc/group \
 && mkdir -p /state && chown 10001:10001 /state
ENV PATH=/opt/berth/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    OTEL_INSTRUMENTATION_A2A_SDK_ENABLED=false \
    BERTH_PORT=8000 \
    BERTH_STATE_DIR=/state
# berth itself last: a small layer.
COPY project /tmp/project
RUN pip install -q --no-index --no-cache-dir --disable-pip-version-check --no-deps /tmp/project/*.whl \
 && pip check && rm -rf /tmp/project
USER 10001:10001
WORKDIR /state
EXPOSE 8000
# SIGTERM drains (the SDK); run the container with --init so PID 1 forwards it.
CMD ["python", "-m", "berth.examples.echo", "--host", "0.0.0.0"]
