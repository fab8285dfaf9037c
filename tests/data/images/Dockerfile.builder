ARG BASE=buildenv-test/busybox:1
FROM ${BASE} AS baseline
ARG FLAVOUR=plain
RUN echo "baseline $FLAVOUR" > /stage
COPY . /ctx/

FROM baseline AS full
RUN echo full > /stage
