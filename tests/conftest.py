"""Suite-wide fixtures and plugins: the one local stack of the session and its helpers (``support/stack_fixtures``),
and the reliability report every category records into (``support/reliability``)."""

from support.reliability import (  # noqa: F401 - pytest finds fixtures and hooks by name in conftest modules
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    reliability,
)
from support.stack_fixtures import (  # noqa: F401
    api,
    captured_logs,
    emulator,
    events,
    invoke,
    repository,
    stack,
    webhook_receiver,
    worker,
)
