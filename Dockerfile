# The production image: onnxruntime-gpu with CUDA 13 and cuDNN 9 from their pip wheels (pinned
# in requirements/constraints.txt), running as a non-root user. The host needs an NVIDIA driver
# >= 580 and the NVIDIA Container Toolkit (`--gpus all`, or the compose file's reservation).
# Models are not baked in: mount a model directory at /models (see README, "Models").
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN python3 -m venv $VIRTUAL_ENV

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY requirements/constraints.txt requirements/constraints.txt
# The dependencies (2 GB with the CUDA wheels) in a layer of their own, installed with empty
# packages, so that a change to the code does not download them again.
RUN mkdir service models && touch service/__init__.py models/__init__.py \
    && pip install --no-cache-dir -c requirements/constraints.txt '.[gpu]' \
    && rm -r service models
COPY service service
COPY models models
RUN pip install --no-cache-dir --no-deps --force-reinstall .

# A home of its own: ONNX Runtime keeps a small state file there, and /app is read-only to it.
RUN useradd --system --uid 10001 --create-home --home-dir /home/labelsvc labelsvc
USER labelsvc

ENV LABELSVC_HOST=0.0.0.0 \
    LABELSVC_PORT=8000 \
    LABELSVC_MODEL_DIR=/models \
    LABELSVC_EXECUTION_PROVIDER=auto
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD python3 -c "import os,sys,urllib.request; port = os.environ.get('LABELSVC_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz').status != 200)"
CMD ["python3", "-m", "service", "serve"]
