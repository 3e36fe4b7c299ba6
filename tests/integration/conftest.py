from __future__ import annotations

from collections.abc import Iterator

import pytest

from events import ALIAS_CHANGED
from services.cli.devstack.stack import Endpoints
from tests.support import TopicReader

pytestmark = pytest.mark.integration


@pytest.fixture()
def alias_topic(stack: Endpoints) -> Iterator[TopicReader]:
    reader = TopicReader(stack, ALIAS_CHANGED)
    yield reader
    reader.close()
