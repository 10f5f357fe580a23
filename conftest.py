"""Fixtures shared by the test modules: the test registries and repo names.

The registries are the ones scripts/env-up.sh starts; ./test.sh brings
them up and exports their addresses, so a plain `pytest` outside it fails
with a message naming ./test.sh instead of skipping the integration tests.
"""

import re

import pytest

import testimages


@pytest.fixture(scope="session")
def registries():
    """Addresses and credentials of the plain, auth and TLS registries."""
    try:
        return testimages.registry_env()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def repo(request):
    """A repository name of this test's own, e.g. test-mod-py/test-name.

    All registries share one storage root for the whole session, so
    tests that push images keep apart by using this name.
    """
    module, _, name = request.node.nodeid.partition("::")
    # Path components must match [a-z0-9]+([._-][a-z0-9]+)*.
    parts = [re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-")
             for p in (module, name)]
    return "/".join(p[:100] or "x" for p in parts)
