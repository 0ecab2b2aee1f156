# catchup-mix in a container. Build from the repository root and run `python -m reproduce` in it:
#   docker build --build-arg CATCHUP_MIX_COMMIT=$(git rev-parse HEAD) -t catchup-mix .
#   docker run --rm catchup-mix                                     # = python -m reproduce list
#   docker run --rm --gpus all --shm-size 8g -v /path/to/datasets:/data:ro -v "$PWD/out":/work/out \
#       catchup-mix table1 --scale paper --data-root /data
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD":/work/out catchup-mix all --tables-only  # from results/
# Runs, results, tables and figures go to /work/out (the working directory, reproduce's default --out),
# so mount a host folder there to keep them; datasets are read from /data. It runs as the unprivileged
# user `catchup` (uid 10001); add `--user "$(id -u):$(id -g)"` to write into a host folder as yourself
# (without it, a folder uid 10001 cannot write stops the command at once, with that hint).
#
# Base image: the official PyTorch CUDA runtime image with the SAME torch as requirements-lock.txt
# (2.14.1, which PyPI builds for CUDA 13.0); tests/test_environment_pins.py checks the tag against the
# lock. The tag could not be checked from where this file was written (no registry access). If it does
# not exist, take the tag of hub.docker.com/r/pytorch/pytorch/tags with the same torch and another CUDA
# (e.g. 2.14.1-cuda12.8-cudnn9-runtime); if no image has torch 2.14.1, regenerate the lock for a torch
# that has one, rather than letting pip replace the image's torch.
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/catchup-mix
COPY requirements-lock.txt ./
# Constraints = the lock without the CUDA wheels (cuda-*, nvidia-*, triton): the image's torch and
# torchvision already satisfy the pins below (a local label, 2.14.1+cu130, still matches 2.14.1), so pip
# keeps them and the CUDA libraries they came with; every other package gets the lock's version.
# PIP_CONSTRAINT as well as -c: only the former reaches pip's isolated build env (setuptools).
RUN grep -vE '^(cuda-|nvidia-|triton==)' requirements-lock.txt > constraints.txt
COPY pyproject.toml README.md ./
COPY catchup_mix ./catchup_mix
COPY reproduce ./reproduce
# Extras: logging, figures, saliency (OpenCV's map for SaliencyMix, which paper-scale runs ask for), slurm.
RUN PIP_CONSTRAINT=/opt/catchup-mix/constraints.txt pip install --no-cache-dir -c constraints.txt \
        'torch==2.14.1' 'torchvision==0.29.1' '.[logging,figures,saliency,slurm]' \
 && python -m reproduce list --names

# The frost photographs of the corruptions (extra `frost`): only the image files of imagecorruptions are read,
# so it comes without its dependencies (OpenCV, scikit-image).
RUN pip install --no-cache-dir --no-deps -c constraints.txt 'imagecorruptions==1.1.2'

# The commit the image is built from: .dockerignore leaves .git out, so the build records it and results made in
# the image name it (without the argument they say "commit unknown"). Last, so a new commit rebuilds no layer above.
ARG CATCHUP_MIX_COMMIT=""
ENV CATCHUP_MIX_COMMIT=$CATCHUP_MIX_COMMIT

RUN useradd --create-home --uid 10001 catchup \
 && mkdir -p /data /work/out \
 && chown catchup /work/out
USER catchup
# matplotlib's cache must be writable whichever --user runs the container; CATCHUP_MIX_IMAGE=1 lets
# reproduce name docker run's --user as the fix when it cannot write its output folder
ENV MPLCONFIGDIR=/tmp/matplotlib \
    CATCHUP_MIX_IMAGE=1
WORKDIR /work/out
VOLUME ["/data", "/work/out"]

ENTRYPOINT ["python", "-m", "reproduce"]
CMD ["list"]
