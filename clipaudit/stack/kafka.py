"""A single-node Kafka in KRaft mode (combined broker + controller) on loopback."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

from clipaudit.errors import Unavailable
from clipaudit.stack import process
from clipaudit.stack.server import Server

_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
"""

JVM_FLAGS = [
    "-Xms256m", "-Xmx512m",
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]


def new_cluster_id() -> str:
    """A KRaft cluster id: URL-safe base64 of 16 random bytes, no padding, never starting with
    "-" (one in 64 would, and a command line reads it as an option; Kafka's own Uuid draws again too)."""
    while True:
        cid = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class KafkaServer(Server):
    """Kafka ``kafka.Kafka`` started from the Maven-resolved jars."""

    name = "kafka"
    startup_timeout = 120.0
    stop_timeout = 30.0

    def ports(self) -> dict[str, int]:
        return {
            "kafka_port": self.settings.kafka_port,
            "kafka_controller_port": self.settings.kafka_controller_port,
        }

    def endpoint(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def properties_file(self) -> Path:
        return self.dir / "server.properties"

    def cluster_id(self) -> str:
        """The id stored in formatted storage, else the saved one, else a new saved one."""
        meta = self.data_dir / "meta.properties"
        if meta.exists():
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        saved = self.dir / "cluster_id"
        if saved.exists():
            return saved.read_text().strip()
        cid = new_cluster_id()
        saved.write_text(cid + "\n")
        return cid

    def server_properties(self) -> str:
        s = self.settings
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={s.host}:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{s.host}:{s.kafka_port}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.data_dir}",
            "num.partitions=4",
            "auto.create.topics.enable=true",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=2",
            "num.io.threads=4",
            "log.segment.bytes=67108864",
            "log.retention.hours=72",
            "log.retention.check.interval.ms=300000",
            "message.max.bytes=10485760",
            "",
        ])

    def _java(self, tools: dict[str, Path], main: str, *args: str) -> list[str]:
        return [
            str(tools["java"]), *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.xml'}",
            "-cp", f"{tools['kafka_libs']}/*", main, *args,
        ]

    def prepare(self, tools: dict[str, Path]) -> None:
        super().prepare(tools)
        (self.dir / "log4j2.xml").write_text(_LOG4J2_XML)
        self.properties_file.write_text(self.server_properties())
        if (self.data_dir / "meta.properties").exists():
            return
        argv = self._java(tools, "kafka.tools.StorageTool", "format", "--standalone",
                          f"--cluster-id={self.cluster_id()}",   # '=': an id saved with a leading '-' stays a value
                          "-c", str(self.properties_file))
        proc = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True)
        with self.log_file.open("a") as log:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise Unavailable(
                f"formatting Kafka storage failed (exit {proc.returncode}); last lines of "
                f"{self.log_file}:\n{process.tail(self.log_file)}"
            )

    def command(self, tools: dict[str, Path]) -> list[str]:
        return self._java(tools, "kafka.Kafka", str(self.properties_file))

    def is_ready(self) -> bool:
        if not process.tcp_accepts(self.settings.host, self.settings.kafka_port):
            return False
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="clipaudit-stack",
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
        )
        try:
            admin.list_topics()
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()
