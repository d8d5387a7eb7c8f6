# The cityops services (gateway, stream, api, sim, provision) for docker-compose.yml: the product only
# (benchmarks and tests run from a checkout).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cityops ./cityops
COPY gateway ./gateway
COPY stream ./stream
COPY ioc ./ioc
COPY firmware_sim ./firmware_sim
COPY dashboards ./dashboards
RUN pip install --no-cache-dir . && useradd --system --create-home cityops
USER cityops
ENTRYPOINT ["cityops"]
