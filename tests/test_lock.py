"""requirements.lock pins every package medr1[dev] needs, at the version this test run has installed:
`make install` (pip install -c requirements.lock) reproduces the environment the tests passed in."""

from __future__ import annotations

import importlib.util

from tests.helpers.config import REPO


def load_lock_script():
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pinned() -> dict[str, str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_the_lock_pins_every_installed_dependency_at_its_installed_version():
    needed = load_lock_script().closure("medr1", ["dev"])
    assert {"torch", "transformers", "lightning", "peft", "pydicom", "nibabel", "pytest"} <= set(needed)
    lock = pinned()
    assert set(needed) <= set(lock), f"unpinned: {sorted(set(needed) - set(lock))}; run make upgrade"
    drifted = {name: (lock[name], version) for name, version in needed.items() if lock[name] != version}
    assert not drifted, f"installed versions differ from requirements.lock (lock, installed): {drifted}"
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"


def test_the_walk_follows_extras_and_skips_unrequested_ones():
    closure = load_lock_script().closure
    assert "pytest" in closure("medr1", ["dev"]) and "pytest" not in closure("medr1", [])
