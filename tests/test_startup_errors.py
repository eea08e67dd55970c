"""Start-up configuration errors are ConfigErrors that stop the process with a message."""

from __future__ import annotations

import pytest

from gateway.config import GatewayConfig
from gateway.main import DEFINITION as GATEWAY
from gateway.main import resolver_for
from services.common.config import ConfigError
from services.common.runner import run_service


def test_a_discovery_the_gateway_does_not_know_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown discovery kind 'zookeeper'"):
        resolver_for(GatewayConfig(discovery="zookeeper"))
    with pytest.raises(ConfigError, match="Consul agent address"):
        resolver_for(GatewayConfig(discovery="consul"))


def test_a_bad_setting_stops_the_service_with_a_message_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        run_service(GATEWAY, ["--set", "server.prot=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "visionmesh serve gateway: configuration error: unknown setting 'server.prot'" in err
    assert "Traceback" not in err
