# The control plane's image: one image runs `rollout api`, `rollout worker` and `rollout agent`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what .dockerignore lets through: pyproject.toml, README.md and the Python packages.
COPY . /src
RUN pip install '/src[server]' && rm -rf /src

# A fixed non-root uid, and the directories the agent writes (named volumes inherit the owner).
RUN useradd --system --uid 10001 --user-group --home-dir /home/rollout --create-home rollout \
    && mkdir -p /var/lib/rollout-agent /srv/demo-app \
    && chown rollout:rollout /var/lib/rollout-agent /srv/demo-app

USER rollout
WORKDIR /home/rollout
EXPOSE 8000

ENTRYPOINT ["rollout"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
