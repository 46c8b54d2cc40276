"""Build and cache the server binaries the local stack runs (no Docker, no downloads
outside package registries).

* Kafka: the broker jars from Maven Central, resolved by ``mvn`` into
  ``<cache_dir>/kafka-<version>/libs`` (a stamp file marks a complete copy).
* MinIO: ``go install`` of a pinned pseudo-version into ``<cache_dir>/bin``.
* Prometheus: the Debian package (``/usr/bin/prometheus``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from clipaudit.config import StackSettings
from clipaudit.errors import FailedPrecondition, Unavailable

KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.25.4"  # the log4j-core that kafka 4.3.1 depends on
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.clipaudit</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <!-- routes kafka's slf4j 1.7 logging into log4j2 -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message)


def _require(program: str, hint: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise FailedPrecondition(f"`{program}` not found on PATH; {hint}")
    return path


def _run(argv: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        out = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise Unavailable(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{out}")


def kafka_home(settings: StackSettings) -> Path:
    """Directory holding ``pom.xml`` and ``libs/`` for the pinned Kafka version."""
    return settings.cache_dir / f"kafka-{KAFKA_VERSION}"


def kafka_libs(settings: StackSettings) -> Path:
    return kafka_home(settings) / "libs"


def minio_binary(settings: StackSettings) -> Path:
    return settings.cache_dir / "bin" / "minio"


def ensure_java() -> str:
    """Path of ``java`` (Kafka 4 needs Java 17+)."""
    return _require("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)")


def ensure_kafka(settings: StackSettings, console: Any = None) -> Path:
    """Resolve the Kafka broker jars with Maven once; return the ``libs`` directory."""
    home = kafka_home(settings)
    libs = home / "libs"
    stamp = home / ".complete"
    if stamp.exists() and any(libs.glob(f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar")):
        return libs
    mvn = _require("mvn", "install Maven (`apt-get install maven`) or run `make tools`")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM)
    if libs.exists():
        shutil.rmtree(libs)
    _say(console, f"resolving Kafka {KAFKA_VERSION} jars with Maven into {libs} ...")
    t0 = time.monotonic()
    _run(
        [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        "Maven resolution of the Kafka jars",
        cwd=home,
    )
    stamp.write_text(f"{KAFKA_VERSION}\n")
    _say(console, f"Kafka jars ready in {time.monotonic() - t0:.0f}s")
    return libs


def ensure_minio(settings: StackSettings, console: Any = None) -> Path:
    """Build the pinned MinIO with ``go install`` once; return the binary path."""
    binary = minio_binary(settings)
    stamp = binary.with_name("minio.version")
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == MINIO_VERSION:
        return binary
    go = _require("go", "install Go 1.24+ (https://go.dev/dl) or run `make tools`")
    binary.parent.mkdir(parents=True, exist_ok=True)
    _say(console, f"building MinIO {MINIO_VERSION} with `go install` (minutes when cold) ...")
    t0 = time.monotonic()
    _run([go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"], "go install of MinIO",
         env={"GOBIN": str(binary.parent)})
    stamp.write_text(f"{MINIO_VERSION}\n")
    _say(console, f"MinIO built in {time.monotonic() - t0:.0f}s")
    return binary


def ensure_prometheus(console: Any = None) -> Path:
    """Path of the Debian ``prometheus`` binary; apt-installs it only when root and
    ``CI`` or ``CLIPAUDIT_AUTO_APT`` is set."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found:
        return Path(found)
    auto = os.environ.get("CLIPAUDIT_AUTO_APT") or os.environ.get("CI")
    if os.geteuid() == 0 and auto and shutil.which("apt-get"):
        _say(console, "installing prometheus with apt-get ...")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-q"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"],
             "apt-get install prometheus", env=env)
        found = shutil.which("prometheus")
        if found:
            return Path(found)
    raise FailedPrecondition(
        "`prometheus` not found; run `make tools` (it runs `apt-get install -y prometheus` as root)"
    )


def ensure_tools(settings: StackSettings, console: Any = None) -> dict[str, Path]:
    """Build or find every binary the stack needs; idempotent and fast when cached.

    Returns ``{"java", "kafka_libs", "minio", "prometheus"}`` paths.
    """
    return {
        "java": Path(ensure_java()),
        "kafka_libs": ensure_kafka(settings, console),
        "minio": ensure_minio(settings, console),
        "prometheus": ensure_prometheus(console),
    }
