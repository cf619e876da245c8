# eodh-proxy container image: a team gateway listening on port 8080.
#
#   docker build -t eodh-proxy .
#   docker run -d -p 8080:8080 -v "$PWD/gateway:/etc/eodh-proxy" eodh-proxy
#
# The mounted folder holds config.yaml (optional) and vault.yaml, the files the
# proxy reads by default with XDG_CONFIG_HOME=/etc. The proxy runs as user
# 10001, which must be able to read them (and write the folder for the
# `client` and `vault` commands). The README's "Container" section has more.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/eodh-proxy
COPY pyproject.toml README.md /src/
COPY proxy /src/proxy
# The speed extra adds uvloop, a faster event loop that the proxy uses when installed.
# hadolint ignore=DL3013
RUN /opt/eodh-proxy/bin/pip install "/src[speed]"

FROM python:3.11-slim
RUN groupadd --system --gid 10001 eodh-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin eodh-proxy \
    && install -d -o 10001 -g 10001 -m 0700 /etc/eodh-proxy
COPY --from=build /opt/eodh-proxy /opt/eodh-proxy
ENV PATH=/opt/eodh-proxy/bin:$PATH \
    XDG_CONFIG_HOME=/etc \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
# Slim images have no curl. The probe bypasses any HTTP(S)_PROXY set for the upstream.
# It assumes port 8080: change it too if CMD listens elsewhere.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/_proxy/healthz', timeout=4)"]
ENTRYPOINT ["eodh-proxy"]
# Listening beyond loopback: the vault must list clients (see `eodh-proxy client add`).
CMD ["serve", "--listen", "0.0.0.0:8080"]
