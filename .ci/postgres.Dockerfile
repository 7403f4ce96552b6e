# A stand-in for the official postgres image, for machines that cannot reach Docker Hub (such as the one compose.yaml
# was tried on): Debian's PostgreSQL with the same interface compose.yaml uses (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, data in /var/lib/postgresql/data, port 5432, pg_isready on the PATH, UTF8 like the official image:
# psycopg returns bytes from a SQL_ASCII database and SQLAlchemy then fails to connect). Not for production.
#   podman build -f .ci/postgres.Dockerfile --build-arg BASE_IMAGE=localhost/bookworm-py311 -t localhost/postgres-local .ci
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
# hadolint ignore=DL3066
USER postgres
EXPOSE 5432
# First start: a cluster whose superuser is POSTGRES_USER with POSTGRES_PASSWORD, and the database POSTGRES_DB.
CMD ["/bin/sh", "-c", "set -e; if [ ! -s \"$PGDATA/PG_VERSION\" ]; then [ -n \"$POSTGRES_PASSWORD\" ] || { echo 'POSTGRES_PASSWORD is not set' >&2; exit 1; }; printf '%s' \"$POSTGRES_PASSWORD\" > /tmp/pw; initdb -E UTF8 --locale=C.UTF-8 -U \"${POSTGRES_USER:-postgres}\" --pwfile=/tmp/pw -A scram-sha-256 >/dev/null; rm /tmp/pw; echo \"host all all all scram-sha-256\" >> \"$PGDATA/pg_hba.conf\"; pg_ctl -w start -o '-c listen_addresses=' >/dev/null; PGPASSWORD=\"$POSTGRES_PASSWORD\" createdb -h /run/postgresql -U \"${POSTGRES_USER:-postgres}\" \"${POSTGRES_DB:-postgres}\"; pg_ctl -w stop >/dev/null; fi; exec postgres -c listen_addresses='*'"]
