# One image for every quotaflow component: `docker run IMAGE ingress|worker|push|edge|topics ...`
# (the default target, the last stage). Two stages so the runtime image carries no pip cache,
# no compiler and no build metadata.
#
# `docker build --target edge` builds the slim edge image instead: only the quotaflow-edge
# distribution (packaging/edge: edge/, wire/ and the few shared modules the edge imports),
# no Faust, no Kafka client, no RocksDB bindings, no Stripe SDK; `quotaflow-edge` is its
# entry point (`docker run IMAGE --region eu --port 9101`).
FROM python:3.11-slim AS edge-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/quotaflow-edge
WORKDIR /src
# The sources packaging/edge builds from; setuptools takes only the modules it lists.
COPY packaging/edge ./packaging/edge
COPY edge ./edge
COPY wire ./wire
COPY quotaflow ./quotaflow
COPY tables ./tables
# A build/ directory copied from a working tree could hold modules deleted since: drop it.
RUN rm -rf packaging/edge/build \
 && /opt/quotaflow-edge/bin/pip install --upgrade pip \
 && /opt/quotaflow-edge/bin/pip install ./packaging/edge

FROM python:3.11-slim AS edge
LABEL org.opencontainers.image.title="quotaflow-edge" \
      org.opencontainers.image.description="quotaflow's edge sidecar alone: live API quotas beside a Rating API" \
      org.opencontainers.image.licenses="Apache-2.0"
# The same fixed uid/gid as the full image, so the chart's pod security context fits both.
RUN groupadd --system --gid 10001 quotaflow \
 && useradd --system --uid 10001 --gid quotaflow --home-dir /var/lib/quotaflow \
      --shell /usr/sbin/nologin quotaflow \
 && mkdir -p /var/lib/quotaflow/usage-spool \
 && chown -R quotaflow:quotaflow /var/lib/quotaflow
COPY --from=edge-build /opt/quotaflow-edge /opt/quotaflow-edge
# Listens on every interface (pushers reach it); consume, check and quota reads answer only
# applications whose token digests are in QUOTAFLOW_EDGE_APP_TOKENS (none set here).
ENV PATH=/opt/quotaflow-edge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUOTAFLOW_EDGE_HOST=0.0.0.0 \
    QUOTAFLOW_USAGE_SPOOL_DIR=/var/lib/quotaflow/usage-spool
WORKDIR /var/lib/quotaflow
USER 10001:10001
EXPOSE 9101
# No CMD: `docker run IMAGE` runs the sidecar, configured by its QUOTAFLOW_* environment.
ENTRYPOINT ["quotaflow-edge"]

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/quotaflow
WORKDIR /src
# Only what the package needs: no .venv, tests, caches or local broker state from the tree.
COPY pyproject.toml README.md ./
COPY quotaflow ./quotaflow
COPY ingress ./ingress
COPY streams ./streams
COPY tables ./tables
COPY edge ./edge
COPY wire ./wire
RUN /opt/quotaflow/bin/pip install --upgrade pip \
 && /opt/quotaflow/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="quotaflow" \
      org.opencontainers.image.description="Stripe billing turned into live API quotas at the edge" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot and fsGroup can check and match it.
RUN groupadd --system --gid 10001 quotaflow \
 && useradd --system --uid 10001 --gid quotaflow --home-dir /var/lib/quotaflow \
      --shell /usr/sbin/nologin quotaflow \
 && mkdir -p /var/lib/quotaflow/data \
 && chown -R quotaflow:quotaflow /var/lib/quotaflow
COPY --from=build /opt/quotaflow /opt/quotaflow
# The edge listens on every interface (pushers reach it); its consume, check and quota routes
# answer only applications whose token digests are in QUOTAFLOW_EDGE_APP_TOKENS (none set
# here: an edge started without them refuses every consume with 401 and says so at start).
ENV PATH=/opt/quotaflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUOTAFLOW_INGRESS_HOST=0.0.0.0 \
    QUOTAFLOW_EDGE_HOST=0.0.0.0 \
    QUOTAFLOW_DATA_DIR=/var/lib/quotaflow/data
WORKDIR /var/lib/quotaflow
USER 10001:10001
# ingress, edge sidecar, worker web (metrics/readiness), pusher metrics/readiness, admin API
EXPOSE 8080 9101 6066 9102 8090
ENTRYPOINT ["quotaflow"]
CMD ["--help"]
