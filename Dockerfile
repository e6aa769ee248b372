# The production image: CUDA runtime + onnxruntime-gpu, running as a non-root user.
# Models are not baked in: mount a model directory at /models (see README, "Models").
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV

WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY service service
COPY models models
# The constraints pin the CPU runtime; the GPU build replaces it.
RUN grep -v '^onnxruntime==' requirements/constraints.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt '.[gpu]'

RUN useradd --system --uid 10001 --home-dir /app labelsvc
USER labelsvc

ENV LABELSVC_HOST=0.0.0.0 \
    LABELSVC_PORT=8000 \
    LABELSVC_MODEL_DIR=/models \
    LABELSVC_EXECUTION_PROVIDER=auto
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["python3", "-m", "service", "serve"]
