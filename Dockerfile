FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY counters counters
COPY api api
COPY persist persist
COPY lua lua
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["counters", "serve"]
