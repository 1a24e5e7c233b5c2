"""Under CI=true a skipped test fails, except for missing hardware (tests/conftest.py's hooks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")

TESTS = """
import pytest

def test_passes():
    pass

def test_needs_a_package():
    pytest.skip("needs the foo package (pip install foo)")

def test_imports_or_skips():
    pytest.importorskip("llmtune_surely_absent_package")

@pytest.mark.skipif(True, reason="needs Debian's chromium")
def test_needs_a_browser():
    pass

def test_needs_a_gpu():
    pytest.skip("needs a CUDA GPU")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""


@pytest.fixture
def session(pytester, monkeypatch):
    """``session(ci, **files)``: a pytest run over ``files`` with this suite's conftest, CI=true or not."""

    def run(ci: bool, *args: str, **files: str):
        monkeypatch.setenv("CI", "true") if ci else monkeypatch.delenv("CI", raising=False)
        pytester.makeconftest(CONFTEST + EXTRA_FIXTURE)
        pytester.makepyfile(**files)
        pytester.syspathinsert()
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA", *args)

    return run


EXTRA_FIXTURE = """

@pytest.fixture
def broken_module():
    return require_module("broken_build", "pip install broken_build")
"""


def test_outside_ci_missing_things_skip(session):
    result = session(False, test_things=TESTS)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)


def test_under_ci_a_skip_fails_unless_hardware_is_missing(session):
    result = session(True, test_things=TESTS)
    # the skipif marker acts in setup, so that skip becomes an error; the others fail
    result.assert_outcomes(passed=1, failed=2, errors=1, skipped=1, xfailed=1)
    out = result.stdout.str()
    assert "skipped under CI=true" in out and "needs the foo package (pip install foo)" in out
    assert "llmtune_surely_absent_package" in out and "needs Debian's chromium" in out
    assert re.search(r"SKIPPED \[1\] test_things.py:\d+: needs a CUDA GPU", out)


def test_under_ci_a_module_level_skip_is_a_collection_error(session):
    module = 'import pytest\npytest.importorskip("llmtune_surely_absent_package")\n\ndef test_a():\n    pass\n'
    result = session(True, test_module_skip=module)
    assert result.ret != 0
    result.assert_outcomes(errors=1)
    assert "skipped under CI=true" in result.stdout.str()
    assert session(False, test_module_skip=module).ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_an_installed_module_that_fails_to_import_fails_even_outside_ci(session, pytester):
    # pytest.importorskip would skip this one (an ImportError at import), as it did for a broken bitsandbytes
    pytester.mkpydir("broken_build").joinpath("__init__.py").write_text('raise ImportError("libfoo.so: not found")')
    test = "def test_uses_it(broken_module):\n    pass\n\ndef test_other():\n    pass\n"
    result = session(False, test_broken=test)
    result.assert_outcomes(passed=1, errors=1)
    assert "libfoo.so: not found" in result.stdout.str()


def test_under_ci_a_run_without_pytest_timeout_is_refused(session):
    # without the plugin pyproject's timeout is an unknown option (a warning) and a hung test holds CI forever
    result = session(True, "-p", "no:timeout", test_things="def test_a():\n    pass\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pytest-timeout is not installed" in result.stderr.str()
    assert session(False, "-p", "no:timeout", test_things="def test_a():\n    pass\n").ret == pytest.ExitCode.OK
    assert session(True, test_things="def test_a():\n    pass\n").ret == pytest.ExitCode.OK
