# eodh-proxy container image. Build: docker build -t eodh-proxy .
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 proxy
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir '.[speed]' && rm -rf /root/.cache

USER proxy
ENV XDG_CONFIG_HOME=/config
EXPOSE 8080
ENTRYPOINT ["eodh-proxy"]
CMD ["serve", "--config", "/config/eodh-proxy/config.yaml"]
