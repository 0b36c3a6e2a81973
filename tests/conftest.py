"""Suite-wide fixtures and plugins: the one local stack of the session and its helpers (``support/stack_fixtures``),
the reliability report every category records into (``support/reliability``) and the watch on every log line,
answer, event and webhook for secrets (``support/leak_watch``)."""

import pytest
from support import leak_watch
from support import reliability as reliability_report
from support.recording_queue import side_queue  # noqa: F401 - a fixture
from support.routes import invocations  # noqa: F401 - a fixture
from support.stack_fixtures import (  # noqa: F401 - pytest finds fixtures by name in conftest modules
    api,
    captured_logs,
    emulator,
    events,
    invoke,
    moderation,
    repository,
    stack,
    webhook_receiver,
    worker,
)


def pytest_configure(config: pytest.Config) -> None:
    for plugin in (reliability_report, leak_watch):
        if not config.pluginmanager.is_registered(plugin):
            config.pluginmanager.register(plugin, f"flux-{plugin.__name__.rsplit('.', 1)[-1]}")
