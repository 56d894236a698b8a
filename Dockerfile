# Build: docker build -t carestream .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin carestream

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 carestream
COPY --from=build /src/target/release/carestream /usr/local/bin/carestream
COPY schemas /etc/carestream/schemas
COPY rules /etc/carestream/rules
ENV CARESTREAM_SCHEMAS__DIR=/etc/carestream/schemas \
    CARESTREAM_RULES__DIR=/etc/carestream/rules \
    CARESTREAM_HTTP__LISTEN=0.0.0.0:9464 \
    CARESTREAM_LOG__FORMAT=json
USER carestream
EXPOSE 9464
ENTRYPOINT ["carestream"]
CMD ["run"]
