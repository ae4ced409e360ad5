FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY bus ./bus
COPY workers ./workers
COPY mcp_server ./mcp_server
COPY msgbus ./msgbus
COPY bench ./bench
RUN pip install --no-cache-dir .
ENV MESSAGE_BUS_REDIS_URL=redis://redis:6379/0 \
    MESSAGE_BUS_BROKER_URL=amqp://guest:guest@rabbitmq:5672//
USER nobody
CMD ["msgbus", "worker"]
