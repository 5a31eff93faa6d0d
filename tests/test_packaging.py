"""What the package is made of: only its own modules import as ``greenflow.*``, and the
core stands without the ledger (which builds on it)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import greenflow

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))


def test_only_the_packages_own_modules_import_under_its_name():
    # The repository's tests/ and a stale build/ are not part of greenflow.
    for name in ("greenflow.tests", "greenflow.build"):
        assert importlib.util.find_spec(name) is None, name
    assert [os.path.basename(p) for p in greenflow.__path__] == ["greenflow"]


def test_the_tools_import_under_the_greenflow_namespace():
    import greenflow.benchmarks.common  # noqa: F401
    import greenflow.cli.main  # noqa: F401
    import greenflow.samples.ping  # noqa: F401


def test_importing_the_core_does_not_import_the_ledger():
    script = ("import sys, greenflow, greenflow.node.identity, greenflow.node.node; "
              "print(sorted(m for m in sys.modules if m.startswith('greenflow.ledger')))")
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_key_helpers_keep_their_ledger_names(tmp_path):
    from greenflow.keys import KeyPair
    from greenflow.ledger import KeyFileError as LedgerKeyFileError
    from greenflow.ledger.crypto import (KeyFileError, load_keypair, load_or_create_keypair,
                                         save_keypair, verify)
    from greenflow.ledger.crypto import KeyPair as LedgerKeyPair
    assert LedgerKeyPair is KeyPair and LedgerKeyFileError is KeyFileError
    kp = load_or_create_keypair(tmp_path / "k")
    assert load_keypair(tmp_path / "k") == kp
    assert verify(kp.public_key, b"x", kp.sign(b"x"))
    try:
        save_keypair(tmp_path / "k", KeyPair.generate())
    except KeyFileError:
        pass
    else:
        raise AssertionError("an existing key file was overwritten")


def test_the_architecture_picture_places_every_module_in_a_layer():
    # docs/architecture.md draws its picture with this script; a module it cannot place
    # (a new one) makes it fail, so the picture never silently leaves modules out.
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "docs", "import_graph.py")
    out = subprocess.run([sys.executable, script, "--table"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "state machine -> storage" in out.stdout
