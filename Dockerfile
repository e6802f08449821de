# gatekeeper's image: python:3.11 slim (Debian bookworm), the package and its dependencies in a venv, run as a
# numeric non-root user. Build from the project root:  docker build -t gatekeeper:0.1.0 .
#
# The base is pinned by its full version tag (no digest: this project was built without access to a registry
# to read one; pin `python:3.11.11-slim-bookworm@sha256:...` once you have pulled it, and bump deliberately).
# Two stages: pip and the source stay in the build stage; the final image holds the venv and nothing to build
# with (the wheels of every dependency are binary: gevent, httptools, google-re2, cryptography, brotli).
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY setup.py pyproject.toml README.md /src/
COPY gatekeeper /src/gatekeeper
RUN python -m venv /opt/gatekeeper
RUN /opt/gatekeeper/bin/pip install --no-cache-dir --prefer-binary /src

FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/gatekeeper /opt/gatekeeper
ENV PATH=/opt/gatekeeper/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# 65532: no entry in /etc/passwd is needed; Kubernetes' restricted profile wants runAsNonRoot, which a
# numeric USER lets the kubelet verify
USER 65532:65532
WORKDIR /tmp
# 8080: traffic (--listen), 9090: the admin listener (/healthz, /readyz, /metrics; never expose it publicly)
EXPOSE 8080 9090
# Docker's own check (Kubernetes ignores it and uses the Deployment's probes)
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["gatekeeper"]
CMD ["serve", "--conf-d", "/etc/gatekeeper/conf.d", "--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9090"]
