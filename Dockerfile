# LoRA Gate: one image for the web gate and the GPU worker (`gate serve`, `gate worker --gpu`).
# Build: docker build -t lora-gate .
# Run:   docker run --gpus all -p 8000:8000 -e GATE_UPLOAD_SECRET=... -v /srv/gate:/data \
#          -v /srv/models:/models:ro -e GATE_BASE_MODEL_DIR=/models/base -e GATE_EMBEDDER_DIR=/models/embedder \
#          -e GATE_CALIBRATION=/models/calibration.json lora-gate
# The image runs in the production profile: `gate serve` and `gate worker` refuse to start (exit 2) until
# GATE_BASE_MODEL_DIR and GATE_EMBEDDER_DIR name the models; GATE_CALIBRATION (else /data/calibration.json,
# written by `gate calibrate`) holds the thresholds. To try the baked-in fixture world instead (toy models and
# characters, not for real uploads): docker run -p 8000:8000 -e GATE_PROFILE=demo -e GATE_UPLOAD_SECRET=... lora-gate
#
# torch is the version CI tests (.ci/image-check installs the wheel this builds beside the CPU build of the same
# version and scans with it). PyPI's Linux wheel of torch is its CUDA build, and it pins its CUDA libraries
# (nvidia-* wheels) exactly, so TORCH_VERSION pins CUDA too; the host needs only the NVIDIA driver and
# container toolkit. A base image with its own torch drifted from what was tested: transformers 5 disabled
# PyTorch 2.5 and every scan failed while an import check passed.
FROM python:3.11.11-slim-bookworm
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Models load from local directories with local_files_only=True, so no offline switch is needed for them;
    # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE, which huggingface_hub also reads) would make every Hub call
    # fail, including the fetch of a repo's files after a Hugging Face webhook. Telemetry stays off.
    HF_HUB_DISABLE_TELEMETRY=1 \
    GATE_DATA_DIR=/data \
    GATE_WORLD_DIR=/app/fixtures/world

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gate \
 && mkdir -p /data && chown gate:gate /data

WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md constraints.txt ./
COPY gate ./gate
COPY probes ./probes
# The fixture world (tiny base model, embedder, characters, LoRAs): what GATE_PROFILE=demo runs on.
COPY fixtures ./fixtures
# Every other dependency at the version CI tested (constraints.txt), then a real scan, not an import: a
# character LoRA blocked and a style allowed by the installed `gate`, on the CPU (fixtures/smoke.py).
RUN pip install -c constraints.txt '.[probes]' \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && python -m fixtures.smoke

USER gate
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["gate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
