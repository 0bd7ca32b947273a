"""Print the lock file: every package medr1 (with the given extras) needs, at the version installed now.

`make upgrade` runs it after the test suite passed on freshly resolved versions, so requirements.lock
always holds versions the tests passed with; `make install` installs exactly those
(`pip install -c requirements.lock`). Walks the requirement tree of the installed distributions
(markers evaluated for this Python and the extras asked for), so tools installed beside medr1 stay out.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(root: str, extras: list[str]) -> dict[str, str]:
    """name -> installed version of `root` (with `extras`) and everything it requires, recursively."""
    versions: dict[str, str] = {}
    todo = [(root, tuple(extras))]
    seen = set()
    while todo:
        name, wanted = todo.pop()
        key = (canonicalize_name(name), wanted)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency that is not installed: nothing to pin
        if canonicalize_name(name) != canonicalize_name(root):
            versions[canonicalize_name(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            todo.append((requirement.name, tuple(sorted(requirement.extras))))
    return versions


def main(argv: list[str]) -> None:
    extras = argv[1:] or ["dev"]
    print(
        f"# medr1[{','.join(extras)}]: the versions `make test` last passed with. Written by `make upgrade`"
    )
    print("# (scripts/lock.py); `make install` installs exactly these (pip install -c requirements.lock).")
    for name, version in sorted(closure("medr1", extras).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main(sys.argv)
