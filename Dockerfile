# The ketch image: scheduler, web server and task pods all run it (ENTRYPOINT ketch).
#   docker build -t ghcr.io/example/ketch:0.1.0 .
# Slim and non-root: the wheel is built in a throwaway stage, the runtime stage has no
# compiler, no pip cache and runs as UID 10001 (the manifests in deploy/kubernetes rely on it).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KETCH_HOME=/var/lib/ketch
RUN groupadd --system --gid 10001 ketch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ketch --create-home \
       --shell /usr/sbin/nologin ketch
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# DAGs baked into the image go here (point [core] dags_folder and
# [kubernetes] dags_folder_in_pod at it); with git-sync they arrive in /dags/repo instead.
RUN mkdir -p /opt/ketch/dags && chown ketch:ketch /opt/ketch/dags
WORKDIR /var/lib/ketch
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["ketch"]
CMD ["--help"]
