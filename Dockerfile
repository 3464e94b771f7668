# tidings in a small image: `docker build -t tidings .`
# The project folder (tidings.toml, content/, templates/) is mounted at
# /srv/tidings; secrets come from the environment.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tidings

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /srv/tidings --shell /usr/sbin/nologin tidings \
 && mkdir -p /srv/tidings && chown tidings:tidings /srv/tidings
COPY --from=build /src/target/release/tidings /usr/local/bin/tidings
USER tidings
WORKDIR /srv/tidings
EXPOSE 8080
CMD ["tidings", "serve", "--listen", "0.0.0.0:8080"]
