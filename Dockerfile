# Sleep Movement CDS — production image.
# The install and start commands are the ones `make install` / `sleep-cds migrate` /
# `sleep-cds serve` run, and the tests exercise (tests/test_dockerfile.py checks they stay so).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CDS_HOST=0.0.0.0 \
    CDS_PORT=8080

RUN useradd --create-home --uid 10001 cds
WORKDIR /app

COPY pyproject.toml README.md ./
COPY service/ service/
COPY migrations/ migrations/
COPY fhir_profiles/ fhir_profiles/
# The base image's setuptools (65.x) has known vulnerabilities (CVE-2024-6345, CVE-2025-47273):
# upgrade it with pip before installing (tests/test_dockerfile.py checks the floor).
RUN pip install --upgrade pip "setuptools>=78.1.1" wheel && pip install -e .

USER cds
EXPOSE 8080

# Migrations are a separate step, run before serving (e.g. an init container or a release job):
#   docker run --rm -e CDS_DATABASE_URL=... IMAGE sleep-cds migrate
# Serving on 0.0.0.0 requires an issuer registry (CDS_TRUSTED_ISSUERS_FILE): the service refuses
# to start with authentication off on a non-loopback address.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

CMD ["sleep-cds", "serve"]
