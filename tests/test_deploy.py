"""The container deployment does not expose an unauthenticated broker."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_redis_is_not_published_and_needs_the_password_every_process_uses() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    redis = services["redis"]
    assert "ports" not in redis  # reachable from the compose network only
    assert "--requirepass" in redis["command"]
    assert "${REDIS_PASSWORD" in redis["command"][redis["command"].index("--requirepass") + 1]
    for name in ("cpu-worker", "gpu-worker", "coordinator"):
        env = services[name]["environment"]
        assert env["DTLR_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")
        assert env["DTLR_DATA_ROOTS"] == "/data" and env["DTLR_HOME"].startswith("/data/")
    assert "REDIS_PASSWORD=" in (REPO / "deploy" / "env.example").read_text(encoding="utf-8")
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()
