"""The proxy's settings: who may call the server, and how often.

nginx (docker/nginx/) is the only door to Triton 2.51 in the CPU image, the replicas'
balancer and the chart's pod. Its walls are static configuration; what differs per
deployment (the admin key, the named inference keys, the rate limit) is written here,
at container start, as nginx includes under /tmp/nginx/fence:

  resnet-triton fence --out /tmp/nginx/fence

Settings come from the environment, so that Docker and Kubernetes secrets plug in:
  TRITON_ADMIN_KEY             the restricted APIs' admin key (required)
  RESNET_TRITON_API_KEYS_FILE  named inference keys, one `<name> <key>` per line
  TRITON_BIND_ADDRESS          where the ports are published (default 127.0.0.1)
  RESNET_TRITON_ALLOW_ANONYMOUS=1  publish beyond loopback without keys anyway
  RESNET_TRITON_RATE_LIMIT     requests per second per key (per address without
                               keys); 0 turns the limit off (default: 100 when
                               published beyond loopback, none on loopback)
  RESNET_TRITON_RATE_BURST     requests above the rate served at once (default 200)
A bad setting stops the container at start, naming the variable.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from resnet_triton.errors import UserError
from resnet_triton.serving.probe import HEALTHCHECK_KEY_FILE

# Characters that need no quoting inside an nginx string: a key can be pasted into the
# generated map as it is, and nothing in it can end the string or start a variable.
KEY = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
HEALTHCHECK = "healthcheck"  # the container's own probe (serving/probe.py reads its key)


class FenceError(UserError, ValueError):
    """A setting the proxy cannot start with."""


@dataclass(frozen=True)
class Fence:
    admin_key: str
    keys: dict[str, str]  # name -> key; empty: inference is open
    rate: int  # requests per second; 0: no limit
    burst: int

    @classmethod
    def from_environment(cls, env: dict[str, str]) -> Fence:
        admin_key = env.get("TRITON_ADMIN_KEY", "")
        if not KEY.fullmatch(admin_key):
            raise FenceError(
                "TRITON_ADMIN_KEY must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = - "
                f"(got {len(admin_key)} characters{' of others' if admin_key else ''})"
            )
        keys_file = env.get("RESNET_TRITON_API_KEYS_FILE")
        keys = read_keys(Path(keys_file)) if keys_file else {}
        published = not check_exposure(env.get("TRITON_BIND_ADDRESS") or "127.0.0.1", keys, env)
        # On loopback the clients are this machine's own (load tests among them).
        rate = whole_number(env, "RESNET_TRITON_RATE_LIMIT", 100 if published else 0)
        burst = whole_number(env, "RESNET_TRITON_RATE_BURST", 200)
        return cls(admin_key, keys, rate, burst)

    def write(self, out: Path, healthcheck_key_file: Path | None = None) -> None:
        """The nginx includes (docker/nginx/*.conf include them), and the probe's key."""
        out.mkdir(parents=True, exist_ok=True)
        keys = dict(self.keys)
        if keys:  # the container's own health probe needs a key of its own
            healthcheck_key_file = healthcheck_key_file or HEALTHCHECK_KEY_FILE
            keys[HEALTHCHECK] = secrets.token_urlsafe(24)
            healthcheck_key_file.parent.mkdir(parents=True, exist_ok=True)
            healthcheck_key_file.touch(mode=0o600)
            healthcheck_key_file.write_text(keys[HEALTHCHECK])
        (out / "keys.conf").write_text(keys_conf(keys, self.admin_key))
        zone = f"limit_req_zone $rate_key zone=clients:10m rate={self.rate}r/s;\n"
        (out / "rate.conf").write_text(zone if self.rate else "")
        limit = f"limit_req zone=clients burst={self.burst} nodelay;\n"
        (out / "limit.conf").write_text(limit if self.rate else "")

    def describe(self) -> str:
        keys = f"{len(self.keys)} named inference keys" if self.keys else "no inference keys"
        rate = f"{self.rate}/s per client, burst {self.burst}" if self.rate else "no rate limit"
        return f"fence: {keys}; {rate}; restricted APIs need the admin key"


def read_keys(path: Path) -> dict[str, str]:
    """name -> key from a keys file: `<name> <key>` per line, # comments. A file with
    no key (compose's default, docker/api-keys.none) leaves inference open."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise FenceError(f"RESNET_TRITON_API_KEYS_FILE {path}: {exc.strerror}") from None
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"RESNET_TRITON_API_KEYS_FILE {path} line {number}"
        if len(fields) != 2:
            raise FenceError(f"{where}: expected `<name> <key>`, got {len(fields)} fields")
        name, key = fields
        if not NAME.fullmatch(name) or name == HEALTHCHECK:
            raise FenceError(f"{where}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ - "
                             f"and not {HEALTHCHECK!r}")  # fmt: skip
        if not KEY.fullmatch(key):
            raise FenceError(f"{where}: the key of {name!r} must be 16-256 characters of "
                             "A-Z a-z 0-9 . _ ~ + / = -")  # fmt: skip
        if name in keys or key in keys.values():
            raise FenceError(f"{where}: {name!r} repeats a name or a key of an earlier line")
        keys[name] = key
    return keys


def check_exposure(
    address: str, keys: dict[str, str], env: dict[str, str], what: str = "TRITON_BIND_ADDRESS"
) -> bool:
    """Whether `address` is loopback; beyond it, no inference keys need an explicit opt-out."""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if loopback or keys or env.get("RESNET_TRITON_ALLOW_ANONYMOUS") == "1":
        return loopback
    raise FenceError(
        f"{what}={address} publishes the server beyond this machine, and "
        "RESNET_TRITON_API_KEYS_FILE names no inference keys: anyone who reaches the port "
        "could use it. Give a keys file, or set RESNET_TRITON_ALLOW_ANONYMOUS=1 to publish "
        "it open (SECURITY.md)"
    )


def check_unfenced(env: dict[str, str], address: str = "127.0.0.1") -> None:
    """`serve` with no nginx in front (make serve, the GPU image) cannot honour keys: a
    keys file that names some, or publishing beyond loopback, stops it at start. Where
    it is published is TRITON_BIND_ADDRESS in a container, else the address it binds."""
    keys_file = env.get("RESNET_TRITON_API_KEYS_FILE")
    if keys_file and read_keys(Path(keys_file)):
        raise FenceError(
            f"RESNET_TRITON_API_KEYS_FILE {keys_file} names inference keys, but no proxy is "
            "in front of this server to check them: only the CPU image's nginx does "
            "(SECURITY.md). Serve through it, or remove the keys file"
        )
    if env.get("TRITON_BIND_ADDRESS"):
        check_exposure(env["TRITON_BIND_ADDRESS"], {}, env)
    else:
        check_exposure(address, {}, env, what="--address")


def whole_number(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name) or str(default)
    if not value.isdigit():
        raise FenceError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


def keys_conf(keys: dict[str, str], admin_key: str) -> str:
    """nginx maps: the caller's key name ($api_key_name, logged) and the refusal its
    Authorization header earns ($key_refusal: 401 none, 403 unknown, empty when let in);
    whether the admin key came ($refuse_admin_key, and the gRPC header's). Keys match
    as case-sensitive regexes: nginx compares a map's plain strings ignoring case."""
    bearer = {name: f'"~^Bearer {re.escape(key)}$"' for name, key in keys.items()}
    lines = ["map $http_authorization $api_key_name {", '    default "";']
    lines += [f'    {pattern} "{name}";' for name, pattern in bearer.items()]
    lines += ["}", "map $http_authorization $key_refusal {"]
    if keys:
        lines += ['    "" 401;', "    default 403;"]
        lines += [f'    {pattern} "";' for pattern in bearer.values()]
    else:
        lines += ['    default "";']
    lines += ["}"]
    for header in ("$http_admin_key", "$http_triton_grpc_protocol_admin_key"):
        lines += [f"map {header} {header.replace('$http_', '$refuse_')} {{",
                  "    default 403;", f'    "~^{re.escape(admin_key)}$" "";', "}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/nginx/fence"),
                        help="folder for the nginx includes")  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> int:
    fence = Fence.from_environment(dict(os.environ))
    fence.write(args.out)
    print(fence.describe(), flush=True)
    return 0
