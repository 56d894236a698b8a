#!/usr/bin/env bash
# Installs Apache Kafka (KRaft broker, storage tool, a log4j2 binding) from Maven Central into a
# cache outside the work tree, so later runs and clones reuse it. Prints the lib directory
# (a classpath of jars) on stdout. Needs Java 17 and Maven.
set -euo pipefail
version="${CARESTREAM_KAFKA_VERSION:-4.1.1}"
cache="${CARESTREAM_CACHE:-$HOME/.cache/carestream}"
root="$cache/kafka-$version"
lib="$root/lib"
if [ ! -f "$root/.complete" ]; then
  command -v mvn >/dev/null || { echo "install-kafka: Maven (mvn) is needed" >&2; exit 1; }
  command -v java >/dev/null || { echo "install-kafka: Java 17 is needed" >&2; exit 1; }
  echo "installing Apache Kafka $version into $root (one-off, resolved by Maven)" >&2
  rm -rf "$root"
  mkdir -p "$root"
  cat >"$root/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>carestream</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  # Its own local repository keeps the download inside the cache and off ~/.m2.
  mvn -q -B -f "$root/pom.xml" -Dmaven.repo.local="$cache/m2" \
    dependency:copy-dependencies -DoutputDirectory="$lib" -DincludeScope=runtime >&2
  touch "$root/.complete"
fi
echo "$lib"
