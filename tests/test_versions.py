"""`--version` on the three programs prints the one version (spec.version, from the package metadata)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from desktop_agent.cli import main as agent_main
from sdk.cli import main as sdk_main
from server.cli import main as server_main
from spec.version import VERSION


@pytest.mark.parametrize(
    ("program", "main"),
    [("cortex-server", server_main), ("cortex-agent", agent_main), ("cortex", sdk_main)],
)
def test_version_flag(program: str, main: Callable[..., int], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"{program} {VERSION}"
