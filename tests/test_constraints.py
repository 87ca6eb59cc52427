"""constraints.txt, the versions the tests last passed with: one pin for each requirement of
setup.cfg (install_requires and the test extra) and for jaxlib, each within setup.cfg's
bounds, so that `pip install -e '.[test]' -c constraints.txt` installs a set that passed."""

import os
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import requirements_of, setup_requirements

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_constraints_pin_every_requirement_within_its_bounds():
    wanted = {canonicalize_name(r.name): r for r in setup_requirements("test")}
    wanted["jaxlib"] = Requirement("jaxlib")
    with open(os.path.join(REPO, "constraints.txt")) as f:
        pins = requirements_of(f.read())
    pinned = {canonicalize_name(p.name): p for p in pins}
    assert len(pinned) == len(pins), "a requirement pinned twice"
    installed = "\n".join(f"{r.name}=={metadata.version(r.name)}" for r in wanted.values())
    assert set(pinned) == set(wanted), (
        f"constraints.txt pins {sorted(set(pinned) - set(wanted))} beyond setup.cfg's and lacks "
        f"{sorted(set(wanted) - set(pinned))}; the versions installed here:\n{installed}")
    for name, pin in pinned.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"constraints.txt: {pin}: pin one version (==)"
        assert wanted[name].specifier.contains(spec.version, prereleases=True), (
            f"constraints.txt: {pin} is outside setup.cfg's {wanted[name]}")
