"""Reference parsing and value generation: no server needed."""

from __future__ import annotations

import dataclasses
import json
import pickle
import string
import sys

import pytest

from technician_ops.errors import ExitCode
from technician_ops.steps.vault.client import (
    CHARSETS,
    Rotation,
    SecretGenerationError,
    SecretRef,
    SecretValue,
    VaultRefError,
    generate,
    generate_from_command,
    parse_ref,
)

GOOD_REFS = [
    ("vault:secret/app/db#password", SecretRef("secret", "app/db", "password")),
    ("vault:secret/db#pw", SecretRef("secret", "db", "pw")),
    ("vault:kv-team/a/b/c/d#api_key", SecretRef("kv-team", "a/b/c/d", "api_key")),
    ("vault:secret/app/db#key.with-dots", SecretRef("secret", "app/db", "key.with-dots")),
]

BAD_REFS = [
    ("secret/app/db#password", "must start with 'vault:'"),
    ("vault:secret/app/db", "names no key"),
    ("vault:secret/app/db#", "names no key"),
    ("vault:secret#password", "needs a mount and a path"),
    ("vault:/app/db#password", "needs a mount and a path"),
    ("vault:secret/#password", "needs a mount and a path"),
    ("vault:secret/app//db#password", "empty, '.' or '..' path segment"),
    ("vault:secret/app/../db#password", "empty, '.' or '..' path segment"),
    ("vault:secret/app/db/#password", "empty, '.' or '..' path segment"),
    ("vault:secret/app/db#pass#word", "more than one '#'"),
    ("vault:secret/app db#password", "whitespace"),
    ("vault:secret/app/db# password", "whitespace"),
    ("", "must start with 'vault:'"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_REFS)
def test_parse_ref_accepts(text: str, expected: SecretRef) -> None:
    ref = parse_ref(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(("text", "message"), BAD_REFS)
def test_parse_ref_rejects(text: str, message: str) -> None:
    with pytest.raises(VaultRefError) as info:
        parse_ref(text)
    assert message in str(info.value)
    assert info.value.exit_code is ExitCode.DATAERR
    assert info.value.hint and "vault:<mount>/<path>#<key>" in info.value.hint


def test_parse_ref_rejects_non_string() -> None:
    with pytest.raises(VaultRefError, match="must be a string"):
        parse_ref(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("charset", "alphabet"),
    [
        ("alnum", set(string.ascii_letters + string.digits)),
        ("hex", set("0123456789abcdef")),
        ("urlsafe", set(string.ascii_letters + string.digits + "-_")),
    ],
)
def test_generate_uses_only_the_charset(charset: str, alphabet: set[str]) -> None:
    value = generate(200, charset)
    assert len(value) == 200
    assert set(value) <= alphabet


def test_generate_printable_no_quote_has_no_quotes_backslash_or_space() -> None:
    value = "".join(generate(500, "printable-no-quote") for _ in range(4))
    assert not set(value) & set("'\"`\\ \t\n\r\x0b\x0c")
    assert set(value) - set(string.ascii_letters + string.digits), "punctuation is used"


def test_generate_is_random_and_defaults_to_32_alnum() -> None:
    values = {generate() for _ in range(50)}
    assert len(values) == 50
    assert all(len(v) == 32 and v.isalnum() for v in values)
    assert set(CHARSETS) == {"alnum", "hex", "urlsafe", "printable-no-quote"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": 0}, "length must be an integer"),
        ({"length": 5000}, "length must be an integer"),
        ({"length": True}, "length must be an integer"),
        ({"charset": "emoji"}, "unknown charset 'emoji'"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(SecretGenerationError, match=message):
        generate(**kwargs)


def test_generate_from_command_strips_stdout() -> None:
    argv = [sys.executable, "-c", "print('  s3cr3t-from-cmd  ')"]
    assert generate_from_command(argv) == "s3cr3t-from-cmd"


def test_generate_from_command_uses_no_shell(tmp_path) -> None:
    marker = tmp_path / "pwned"
    argv = [sys.executable, "-c", "import sys; print(sys.argv[1])", f"x; touch {marker}"]
    assert generate_from_command(argv) == f"x; touch {marker}"
    assert not marker.exists()


def test_generate_from_command_failure_hides_output() -> None:
    argv = [sys.executable, "-c", "import sys; print('LEAKED-VALUE'); sys.exit(3)"]
    with pytest.raises(SecretGenerationError) as info:
        generate_from_command(argv)
    assert "exited with status 3" in str(info.value)
    assert "LEAKED-VALUE" not in str(info.value) + str(info.value.hint)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("pwgen 32 1", "non-empty list of strings"),
        ([], "non-empty list of strings"),
        (["/nonexistent/generator"], "not found"),
        ([sys.executable, "-c", "pass"], "printed nothing"),
    ],
)
def test_generate_from_command_errors(argv, message: str) -> None:
    with pytest.raises(SecretGenerationError, match=message):
        generate_from_command(argv)


def test_generate_from_command_timeout() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(5)"]
    with pytest.raises(SecretGenerationError, match="did not finish within 0.2s"):
        generate_from_command(argv, timeout=0.2)


def test_secret_value_never_shows_itself() -> None:
    value = SecretValue("hunter2-canary")
    shown = [repr(value), str(value), f"{value}", f"{value!r}", "%s" % value, format(value, ">20")]
    assert all("hunter2" not in s for s in shown)
    assert value.reveal() == "hunter2-canary"
    assert value == SecretValue("hunter2-canary") and value != SecretValue("other")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(value)


def test_rotation_record_and_repr_carry_no_value() -> None:
    rotation = Rotation("secret", "app/db", "password", 3, 4, True, SecretValue("hunter2-canary"))
    assert "hunter2" not in repr(rotation) and "hunter2" not in str(rotation)
    assert rotation.as_record() == {
        "mount": "secret",
        "path": "app/db",
        "key": "password",
        "old_version": 3,
        "new_version": 4,
        "key_existed": True,
    }
    assert rotation.ref == SecretRef("secret", "app/db", "password")


def test_rotation_asdict_keeps_the_value_wrapped() -> None:
    rotation = Rotation("secret", "app/db", "password", 3, 4, True, SecretValue("hunter2-canary"))
    as_dict = dataclasses.asdict(rotation)
    assert "hunter2" not in repr(as_dict)
    with pytest.raises(TypeError):
        json.dumps(as_dict)  # a value cannot be serialised by accident
