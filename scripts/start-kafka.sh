#!/usr/bin/env bash
# Starts Apache Kafka in KRaft mode on loopback (each node a combined controller + broker) and
# waits until every node serves.
#   scripts/start-kafka.sh [PORT] [DATA_DIR] [--brokers N] [--secure]
#   (defaults: 19092, target/kafka, 1)
# Node i (0-based) listens for clients on PORT+i and for the quorum on PORT+1000+i; with N = 3
# topics default to replication 3 and min.insync.replicas 2. Writes DATA_DIR/node-i/{kafka.pid,
# kafka.log}. Stop it with scripts/stop-kafka.sh DATA_DIR.
# --secure: also a SASL_SSL listener on PORT+2000+i, as a city's Kafka has: TLS with a
# certificate for 127.0.0.1 and localhost (its own CA: DATA_DIR/tls/ca.pem) and SCRAM-SHA-512
# for the user `carestream`, password $CARESTREAM_KAFKA_SCRAM_PASSWORD (default
# "carestream-secret"). Set before the first start (formatting stores the credential).
set -euo pipefail
port=19092
data=target/kafka
brokers=1
positional=0
secure=0
while [ $# -gt 0 ]; do
  case "$1" in
    --secure) secure=1; shift ;;
    --brokers) brokers="$2"; shift 2 ;;
    --brokers=*) brokers="${1#*=}"; shift ;;
    *)
      if [ $positional -eq 0 ]; then port="$1"; else data="$1"; fi
      positional=$((positional + 1)); shift ;;
  esac
done
lib="$("$(dirname "$0")/install-kafka.sh")"
# Running, and not a zombie: a node killed with SIGKILL whose parent never reaps it still
# answers kill -0.
alive() {
  local state
  state="$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null || true)"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
mkdir -p "$data"
data="$(cd "$data" && pwd)"
if [ "$brokers" -ge 3 ]; then rf=3; isr=2; else rf=1; isr=1; fi
# A small heap each: three nodes and the tests must fit in a 2-core, 24 GiB machine.
heap="${CARESTREAM_KAFKA_HEAP:-$([ "$brokers" -gt 1 ] && echo 384m || echo 512m)}"
voters=""
for i in $(seq 0 $((brokers - 1))); do
  voters="${voters:+$voters,}$((i + 1))@127.0.0.1:$((port + 1000 + i))"
done
# Base64url of 16 random bytes; one starting with '-' would read as an option to the tool.
cluster_id=-
while [ "${cluster_id#-}" != "$cluster_id" ]; do
  cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
done
scram=()
if [ "$secure" -eq 1 ]; then
  scram=(--add-scram "SCRAM-SHA-512=[name=carestream,password=${CARESTREAM_KAFKA_SCRAM_PASSWORD:-carestream-secret}]")
fi
if [ "$secure" -eq 1 ] && [ ! -f "$data/tls/keystore.p12" ]; then
  mkdir -p "$data/tls"
  (
    cd "$data/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=carestream test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key \
      -out broker.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out broker.pem 2>/dev/null
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem \
      -passout pass:keystore-pass -out keystore.p12
  )
fi
for i in $(seq 0 $((brokers - 1))); do
  node="$data/node-$i"
  if [ -f "$node/kafka.pid" ] && alive "$(cat "$node/kafka.pid")"; then
    echo "kafka node $i already running (pid $(cat "$node/kafka.pid")) on 127.0.0.1:$((port + i))"
    continue
  fi
  mkdir -p "$node"
  cat >"$node/server.properties" <<PROPS
process.roles=broker,controller
node.id=$((i + 1))
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$((port + i)),CONTROLLER://127.0.0.1:$((port + 1000 + i))$(
  [ "$secure" -eq 1 ] && echo ",SASL_SSL://127.0.0.1:$((port + 2000 + i))")
advertised.listeners=PLAINTEXT://127.0.0.1:$((port + i))$(
  [ "$secure" -eq 1 ] && echo ",SASL_SSL://127.0.0.1:$((port + 2000 + i))")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
log.dirs=$node/logs
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=6
# Tests start many short-lived groups; production keeps the 3 s default.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=8388608
PROPS
  if [ "$secure" -eq 1 ]; then
    cat >>"$node/server.properties" <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$data/tls/keystore.p12
ssl.keystore.password=keystore-pass
ssl.key.password=keystore-pass
PROPS
  fi
  cat >"$node/log4j2.properties" <<'LOG'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.node.dir}/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
LOG
  if [ ! -f "$node/logs/meta.properties" ]; then
    java -cp "$lib/*" -Dlog4j2.configurationFile="$node/log4j2.properties" -Dkafka.node.dir="$node" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$node/server.properties" \
      "${scram[@]}" \
      >"$node/format.log" 2>&1 \
      || { echo "formatting node $i failed:" >&2; cat "$node/format.log" >&2; exit 1; }
  fi
  # Readiness is read from this log, so a restarted node starts a new one.
  [ -f "$node/kafka.log" ] && mv "$node/kafka.log" "$node/kafka.log.prev"
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$node/log4j2.properties" \
    -Dkafka.node.dir="$node" -cp "$lib/*" kafka.Kafka "$node/server.properties" \
    >"$node/stdout.log" 2>&1 &
  echo $! >"$node/kafka.pid"
done
# Ready when every node has logged its start (a listening port alone is not yet serving).
for _ in $(seq 1 600); do
  ready=0
  for i in $(seq 0 $((brokers - 1))); do
    grep -q "Kafka Server started" "$data/node-$i/kafka.log" 2>/dev/null && ready=$((ready + 1))
  done
  if [ "$ready" -eq "$brokers" ]; then
    echo "kafka running ($brokers node(s)) on 127.0.0.1:$port..$((port + brokers - 1)), data in $data"
    exit 0
  fi
  for i in $(seq 0 $((brokers - 1))); do
    pid="$(cat "$data/node-$i/kafka.pid")"
    if ! alive "$pid"; then
      echo "kafka node $i exited; log:" >&2
      tail -50 "$data/node-$i/kafka.log" "$data/node-$i/stdout.log" >&2 || true
      exit 1
    fi
  done
  sleep 0.1
done
echo "kafka did not start within 60 s" >&2
exit 1
