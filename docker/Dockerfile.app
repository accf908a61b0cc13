# The product's own services for docker-compose.yml: Redis, the nginx entry point, Celery worker,
# beat, Flower and the console. Debian bookworm (debootstrap, with nginx-light and redis-server)
# plus the Python dependencies of pyproject.toml installed on the host. No registry, no pip here.
# docker-compose.yml runs the console, Flower and Beat as a non-root uid (LAUNCHER_SERVICE_UID) on a
# read-only root with /tmp as tmpfs, and Redis as the image's `redis` user: nothing here needs root.
ARG BASE_IMAGE=launcher-services-base:bookworm
FROM ${BASE_IMAGE}
COPY prefix/lib/python3.11/site-packages/ /usr/local/lib/python3.11/dist-packages/
COPY src/ /app/
ENV PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
WORKDIR /app
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-m", "launcher.cli", "--help"]
