#!/usr/bin/env bash
# kafka-run-class.sh CLASS ARGS, or called by a tool's name (kafka-topics.sh ARGS, …) as in
# the official distribution. Honours KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS,
# KAFKA_LOG4J_OPTS and KAFKA_OPTS like the official scripts.
set -euo pipefail
KAFKA=/opt/kafka
tool="$(basename "$0" .sh)"
case "$tool" in
  kafka-server-start)        class=kafka.Kafka ;;
  kafka-storage)             class=kafka.tools.StorageTool ;;
  kafka-topics)              class=org.apache.kafka.tools.TopicCommand ;;
  kafka-broker-api-versions) class=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
  kafka-console-producer)    class=org.apache.kafka.tools.ConsoleProducer ;;
  kafka-console-consumer)    class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  kafka-consumer-groups)     class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  *)                         class="$1"; shift ;;
esac
if [ "$class" = kafka.Kafka ]; then
  heap="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
  perf="${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
  log4j="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$KAFKA/config/log4j2.yaml}"
else
  # Short-lived tools (the compose healthcheck runs one every few seconds): small and quick to start.
  heap="${KAFKA_HEAP_OPTS:--Xmx256M}"
  perf="${KAFKA_JVM_PERFORMANCE_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true}"
  log4j="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$KAFKA/config/tools-log4j2.yaml}"
fi
# shellcheck disable=SC2086  # the *_OPTS are word lists, as in the official scripts
exec java $heap $perf $log4j ${KAFKA_OPTS:-} -cp "$KAFKA/libs/*" "$class" "$@"
