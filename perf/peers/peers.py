"""The peers in the race, by name: every perf/peers/<name>_peer.py's PEER."""

from __future__ import annotations

import importlib

from peer import PEERS_DIR, Peer

PEERS: dict[str, Peer] = {}
for _path in sorted(PEERS_DIR.glob("*_peer.py")):
    _peer = importlib.import_module(_path.stem).PEER
    PEERS[_peer.name] = _peer
