"""Test-only SkyPilot patches, active only in the tests' SkyPilot environment (this directory is on
PYTHONPATH there and nowhere else). Each replaces something that cannot exist on this offline machine,
at its outermost boundary:

- FTCTL_TEST_SKY_OFFLINE=1: the jobs controller's network probe (HEAD https://8.8.8.8 and 1.1.1.1,
  ``backend_utils.check_network_connection`` and its async twin) answers "reachable": offline it loops
  on "Network is not available" and a managed job never finishes.
- FTCTL_TEST_SKY_CLOUDS=gcp,...: the clouds SkyPilot's optimizer believes enabled (a cloud account
  cannot exist here), for pricing from the checked-in catalog fixture.
"""

import importlib.abc
import importlib.machinery
import os
import sys

_PATCHES = {}


def _offline(module):
    def check_network_connection():
        return None

    async def async_check_network_connection():
        return None

    module.check_network_connection = check_network_connection
    module.async_check_network_connection = async_check_network_connection


def _clouds(module):
    names = [c for c in os.environ["FTCTL_TEST_SKY_CLOUDS"].split(",") if c]

    def enabled(*args, **kwargs):
        from sky.utils import registry

        return [registry.CLOUD_REGISTRY.from_str(n) for n in names]

    module.get_cached_enabled_clouds_or_refresh = enabled


if os.environ.get("FTCTL_TEST_SKY_OFFLINE") == "1":
    _PATCHES["sky.backends.backend_utils"] = _offline
if os.environ.get("FTCTL_TEST_SKY_CLOUDS"):
    _PATCHES["sky.check"] = _clouds


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, patch):
        self.inner, self.patch = inner, patch

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, _PATCHES[name])
        return spec


if _PATCHES:
    sys.meta_path.insert(0, _Finder())
