"""The proxy's settings (serving/fence.py): what each bad one says, and the nginx includes
it writes. The walls themselves are probed through the real nginx in tests/docker/."""

import re
import stat

import pytest

from resnet_triton.cli import main as cli
from resnet_triton.serving.fence import Fence, FenceError, check_unfenced, keys_conf

ADMIN = "admin-key-0123456789"


def environment(tmp_path, keys: str | None = None, **extra) -> dict[str, str]:
    env = {"TRITON_ADMIN_KEY": ADMIN, **extra}
    if keys is not None:
        (tmp_path / "keys").write_text(keys)
        env["RESNET_TRITON_API_KEYS_FILE"] = str(tmp_path / "keys")
    return env


def test_keys_file_is_read_with_comments_and_blank_lines(tmp_path):
    text = ("# who may call\n\nalice  alice-key-0123456789ab  # the web shop\n"
            "bob bob-key-0123456789abcd\n")  # fmt: skip
    fence = Fence.from_environment(environment(tmp_path, text))
    assert fence.keys == {"alice": "alice-key-0123456789ab", "bob": "bob-key-0123456789abcd"}
    assert (fence.rate, fence.burst) == (0, 200)  # loopback: the machine's own clients
    assert fence.describe() == ("fence: 2 named inference keys; no rate limit; "
                                "restricted APIs need the admin key")  # fmt: skip
    published = Fence.from_environment(environment(tmp_path, text, TRITON_BIND_ADDRESS="0.0.0.0"))
    assert (published.rate, published.burst) == (100, 200)
    assert "100/s per client, burst 200" in published.describe()
    explicit = environment(tmp_path, text, RESNET_TRITON_RATE_LIMIT="5")
    assert Fence.from_environment(explicit).rate == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("alice\n", "line 1: expected `<name> <key>`, got 1 fields"),
        ("alice short\n", "line 1: the key of 'alice' must be 16-256 characters"),
        ("alice key-with-a-quote\"-0123456\n", "the key of 'alice' must be 16-256"),
        ("al/ice alice-key-0123456789ab\n", "line 1: name 'al/ice' must be 1-64 of"),
        ("healthcheck alice-key-0123456789ab\n", "and not 'healthcheck'"),
        ("a alice-key-0123456789ab\n\nb alice-key-0123456789ab\n",
         "line 3: 'b' repeats a name or a key"),
        ("a alice-key-0123456789ab\na bob-key-0123456789abcd\n", "line 2: 'a' repeats a name"),
    ],
)  # fmt: skip
def test_a_bad_keys_file_names_the_line_and_the_problem(tmp_path, text, message):
    with pytest.raises(FenceError) as info:
        Fence.from_environment(environment(tmp_path, text))
    assert f"RESNET_TRITON_API_KEYS_FILE {tmp_path / 'keys'}" in str(info.value)
    assert message in str(info.value)
    assert "0123456789ab" not in str(info.value)  # a key is never repeated in an error


def test_a_missing_keys_file_is_named(tmp_path):
    env = {"TRITON_ADMIN_KEY": ADMIN, "RESNET_TRITON_API_KEYS_FILE": str(tmp_path / "none")}
    with pytest.raises(FenceError, match=r"RESNET_TRITON_API_KEYS_FILE .*none: No such file"):
        Fence.from_environment(env)


@pytest.mark.parametrize(
    "admin", ["", "short", "has space in it 0123456", 'quote"0123456789abcdef']
)
def test_the_admin_key_must_be_long_and_plain(tmp_path, admin):
    with pytest.raises(FenceError, match="TRITON_ADMIN_KEY must be 16-256 characters"):
        Fence.from_environment({"TRITON_ADMIN_KEY": admin})


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_publishing_beyond_loopback_needs_keys_or_an_opt_out(tmp_path, address):
    env = environment(tmp_path, "# no keys yet\n", TRITON_BIND_ADDRESS=address)
    with pytest.raises(FenceError) as info:
        Fence.from_environment(env)
    assert str(info.value).startswith(f"TRITON_BIND_ADDRESS={address} publishes the server")
    assert "RESNET_TRITON_ALLOW_ANONYMOUS=1" in str(info.value)
    assert Fence.from_environment({**env, "RESNET_TRITON_ALLOW_ANONYMOUS": "1"}).keys == {}
    keyed = environment(tmp_path, "a alice-key-0123456789ab\n", TRITON_BIND_ADDRESS=address)
    assert Fence.from_environment(keyed).keys == {"a": "alice-key-0123456789ab"}


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "127.0.0.2", ""])
def test_loopback_may_stay_open(tmp_path, address):
    assert Fence.from_environment(environment(tmp_path, TRITON_BIND_ADDRESS=address)).keys == {}


@pytest.mark.parametrize("value", ["-1", "ten", "1.5"])
def test_a_bad_rate_is_named(value):
    with pytest.raises(
        FenceError, match=f"RESNET_TRITON_RATE_LIMIT must be a whole number >= 0, got '{value}'"
    ):
        Fence.from_environment({"TRITON_ADMIN_KEY": ADMIN, "RESNET_TRITON_RATE_LIMIT": value})


def test_keys_match_exactly_and_case_sensitively():
    """nginx compares a map's plain strings ignoring case: the keys are anchored regexes."""
    conf = keys_conf({"alice": "Alice.Key+0123456789"}, ADMIN)
    patterns = re.findall(r'"~(\^[^"]+\$)" "alice";', conf)
    assert len(patterns) == 1
    pattern = re.compile(patterns[0])  # PCRE and Python agree on this subset
    assert pattern.fullmatch("Bearer Alice.Key+0123456789")
    for other in ("Bearer alice.key+0123456789", "Bearer AliceXKey+0123456789",
                  "Bearer Alice.Key+01234567890", "Bearer  Alice.Key+0123456789"):  # fmt: skip
        assert not pattern.fullmatch(other), other
    assert '"" 401;' in conf and "default 403;" in conf


def test_without_keys_every_request_is_let_in():
    conf = keys_conf({}, ADMIN)
    refusal = conf[conf.index("map $http_authorization $key_refusal") :].split("}")[0]
    assert "401" not in refusal and "403" not in refusal


def test_fence_writes_the_includes_and_the_probes_key(tmp_path, monkeypatch, capsys):
    keys = tmp_path / "keys"
    keys.write_text("alice alice-key-0123456789ab\n")
    for name, value in {"TRITON_ADMIN_KEY": ADMIN, "RESNET_TRITON_API_KEYS_FILE": str(keys),
                        "RESNET_TRITON_RATE_LIMIT": "7",
                        "RESNET_TRITON_RATE_BURST": "3"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    probe_key = tmp_path / "healthcheck.key"
    monkeypatch.setattr("resnet_triton.serving.fence.HEALTHCHECK_KEY_FILE", probe_key)
    Fence.from_environment(dict(__import__("os").environ)).write(tmp_path / "fence", probe_key)
    assert (tmp_path / "fence/rate.conf").read_text() == (
        "limit_req_zone $rate_key zone=clients:10m rate=7r/s;\n")  # fmt: skip
    assert (
        tmp_path / "fence/limit.conf"
    ).read_text() == "limit_req zone=clients burst=3 nodelay;\n"
    conf = (tmp_path / "fence/keys.conf").read_text()
    assert f'"~^Bearer {probe_key.read_text()}$" "healthcheck";' in conf.replace("\\-", "-")
    assert stat.S_IMODE(probe_key.stat().st_mode) == 0o600

    monkeypatch.setenv("RESNET_TRITON_RATE_LIMIT", "0")
    assert cli(["fence", "--out", str(tmp_path / "off")]) == 0
    assert (
        (tmp_path / "off/rate.conf").read_text() == (tmp_path / "off/limit.conf").read_text() == ""
    )
    assert "no rate limit" in capsys.readouterr().out


def test_serve_without_the_proxy_refuses_keys_it_cannot_check(tmp_path):
    """make serve and the GPU image have no nginx in front: keys would be ignored."""
    env = environment(tmp_path, "a alice-key-0123456789ab\n")
    with pytest.raises(FenceError, match="names inference keys, but no proxy is in front"):
        check_unfenced(env)
    check_unfenced(environment(tmp_path, "# none\n"))  # compose's default file: fine
    with pytest.raises(FenceError, match="TRITON_BIND_ADDRESS=0.0.0.0 publishes the server"):
        check_unfenced({"TRITON_BIND_ADDRESS": "0.0.0.0"})
    check_unfenced({"TRITON_BIND_ADDRESS": "0.0.0.0", "RESNET_TRITON_ALLOW_ANONYMOUS": "1"})
    # Bare (no TRITON_BIND_ADDRESS): the address serve binds is what is published.
    with pytest.raises(FenceError, match="--address=0.0.0.0 publishes"):
        check_unfenced({}, "0.0.0.0")
    check_unfenced({}, "127.0.0.1")
    check_unfenced({"TRITON_BIND_ADDRESS": "127.0.0.1"}, "0.0.0.0")  # a container's inside
