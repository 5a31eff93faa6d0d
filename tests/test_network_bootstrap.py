"""`greenflow network bootstrap` and `greenflow node init`: node directories that agree
on one network map, with hashed RPC passwords."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest
from click.testing import CliRunner

from greenflow.network.bootstrap import bootstrap_network, init_node
from greenflow.node.identity import NodeIdentity
from greenflow.network.network_map import NetworkMap, NetworkMapError, NodeInfo
from greenflow.errors import FlowError
from greenflow.party import Party
from greenflow.network.node_config import (ConfigError, NodeConfig, check_password, read_credentials)


def test_bootstrap_gives_every_node_its_key_config_and_the_same_map(tmp_path):
    from greenflow.cli.network import command

    out = CliRunner().invoke(command, ["bootstrap", "--dir", str(tmp_path), "--nodes", "Alice,Bob",
                                       "--notary", "Notary", "--base-port", "12000"])
    assert out.exit_code == 0, out.output
    maps = []
    for i, name in enumerate(["Notary", "Alice", "Bob"]):
        d = tmp_path / name
        cfg = NodeConfig.load(str(d))
        assert cfg.name == name and cfg.notary == (name == "Notary")
        assert cfg.p2p_address == ("127.0.0.1", 12000 + 2 * i)
        assert cfg.rpc_address == ("127.0.0.1", 12001 + 2 * i)
        assert stat.S_IMODE(os.stat(d / "identity.key").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(d / "rpc-credentials").st_mode) == 0o600
        user, password = read_credentials(str(d))
        assert password not in (d / "node.toml").read_text()
        assert check_password(cfg.user(user).password_hash, password)
        assert not check_password(cfg.user(user).password_hash, password + "x")
        nm = NetworkMap.load(cfg.network_map_path)
        assert nm.get(name).party == NodeIdentity.load_or_create(str(d), name).party
        maps.append((d / "network-map.json").read_text())
    assert maps[0] == maps[1] == maps[2]
    assert [n["name"] for n in json.loads(maps[0])["nodes"]] == ["Notary", "Alice", "Bob"]


def test_free_ports_given_to_the_nodes_of_one_network_are_all_different(tmp_path, monkeypatch):
    """Each port was free when picked but none bound until its node started, so two nodes
    could get the same one (seen as "cannot listen for RPC clients ...: Address already in
    use" when a trade's node restarted)."""
    from greenflow.network import bootstrap
    low = bootstrap._ephemeral_low()
    if low is None or low <= 4096:
        pytest.skip("no ephemeral range to pick below on this machine")
    import itertools
    # Every port comes up twice in a row: as the first node's two ports, say.
    picks = itertools.chain.from_iterable((p, p) for p in itertools.count(low - 200))
    monkeypatch.setattr(bootstrap._PORTS, "randrange", lambda a, b: next(picks))
    configs = bootstrap_network(str(tmp_path / "net"), ["Alice", "Bob", "Carol"], base_port=0)
    ports = [port for c in configs for port in (c.p2p_address[1], c.rpc_address[1])]
    assert len(set(ports)) == len(ports) == 6


def test_network_map_resolves_short_and_case_insensitive_names(tmp_path):
    bootstrap_network(str(tmp_path), ["O=Alice,L=London,C=GB", "Bob"], base_port=0)
    nm = NetworkMap.load(str(tmp_path / "Alice" / "network-map.json"))
    assert nm.resolve("alice").name == "O=Alice,L=London,C=GB"
    assert nm.resolve("Bob").name == "Bob"
    with pytest.raises(NetworkMapError, match="no party 'Carol'.*known: Bob, O=Alice"):
        nm.resolve("Carol")


def test_a_party_name_is_bounded_in_bytes_since_the_store_keys_by_it():
    def node(name: str, port: int) -> NodeInfo:
        return NodeInfo(Party(name, bytes([port]) * 32), ("127.0.0.1", port))
    assert len(NetworkMap([node("A" * 200, 1), node("B", 2)])) == 2
    with pytest.raises(NetworkMapError, match="party name must be 1 to 200 bytes"):
        NetworkMap([node("\u00e9" * 101, 1)])


def test_bootstrap_refuses_an_existing_node_and_duplicate_names(tmp_path):
    bootstrap_network(str(tmp_path), ["Alice"], base_port=0)
    with pytest.raises(ConfigError, match="already holds a node"):
        bootstrap_network(str(tmp_path), ["Alice"], base_port=0)
    with pytest.raises(ConfigError, match="distinct"):
        bootstrap_network(str(tmp_path / "x"), ["Bob", "Bob"], base_port=0)


@pytest.mark.parametrize("nodes, host, made, says", [
    ("O=Alice,L=London,C=GB", "127.0.0.1", ["O=Alice,L=London,C=GB"], None),
    ("O=Alice,L=London,C=GB;O=Bob,L=Paris,C=FR", "127.0.0.1",
     ["O=Alice,L=London,C=GB", "O=Bob,L=Paris,C=FR"], None),
    ("O=Alice,L=London,C=GB,O=Bob,L=Paris,C=FR", "127.0.0.1", [], "separate such names with ';'"),
    ("Alice,,Bob", "127.0.0.1", [], "has an empty name"),
    ("Alice,Bob", "", [], "--host is empty"),
])
def test_bootstrap_takes_x500_names_and_refuses_empty_names_and_hosts(tmp_path, nodes, host, made, says):
    """An X.500 name was split at its commas into three nodes (O=Alice, L=London, C=GB),
    an empty name was dropped, and an empty host written into every node.toml (which
    `node start` then refused)."""
    from greenflow.cli.network import command
    out = CliRunner().invoke(command, ["bootstrap", "--dir", str(tmp_path / "net"), "--nodes", nodes,
                                       "--host", host, "--base-port", "0"])
    if says is None:
        assert out.exit_code == 0, out.output
        names = sorted(NodeConfig.load(str(d)).name for d in (tmp_path / "net").iterdir())
        assert names == made
    else:
        assert out.exit_code == 2 and says in out.output, out.output
        assert not (tmp_path / "net").exists()


def test_a_directory_holding_a_nodes_key_or_store_is_not_made_a_new_node(tmp_path):
    """Only node.toml was looked for: a directory another run left (a key, a store, no
    node.toml) became a new node with that store and key, its states adopted unseen; and
    bootstrap stopped half way, the first nodes made, when a later directory was taken."""
    from greenflow.samples.ping import Ping
    from greenflow.testing import MockNetwork
    with MockNetwork(str(tmp_path / "old")) as net:   # what `greenflow run` leaves
        net.create_node("Bob").start_flow(Ping(net.create_node("Alice").party, 1))
    with pytest.raises(ConfigError, match=r"Bob already holds a node \(identity.key exists\)"):
        bootstrap_network(str(tmp_path / "old"), ["Aaron", "Bob"], base_port=0)
    assert not (tmp_path / "old" / "Aaron").exists()      # nothing made before the refusal
    with pytest.raises(ConfigError, match="already holds a node"):
        init_node(str(tmp_path / "old" / "Alice"), "Alice", p2p_address=("127.0.0.1", 13000),
                  rpc_address=("127.0.0.1", 13001))


def test_ports_past_65535_are_refused_before_anything_is_written(tmp_path):
    """300 nodes from 64990 wrote node.toml files with ports up to 65589."""
    names = [f"N{i}" for i in range(300)]
    with pytest.raises(ConfigError, match="300 nodes from base port 64990 need ports up to "
                                          "65589; the highest port is 65535"):
        bootstrap_network(str(tmp_path / "net"), names, base_port=64990)
    assert not (tmp_path / "net").exists()
    assert len(bootstrap_network(str(tmp_path / "ok"), names[:2], base_port=65532)) == 2


def test_a_name_or_user_no_node_could_start_with_is_refused_at_creation(tmp_path):
    for name in ("", " Alice", "Bob "):
        with pytest.raises(ConfigError, match="must not be empty or start or end with a space"):
            init_node(str(tmp_path / "n"), name, p2p_address=("127.0.0.1", 13000),
                      rpc_address=("127.0.0.1", 13001))
    with pytest.raises(ConfigError, match="RPC user's name must not be empty"):
        bootstrap_network(str(tmp_path / "b"), ["Alice"], base_port=0, rpc_user="")
    assert not (tmp_path / "n").exists() and not (tmp_path / "b" / "Alice" / "node.toml").exists()


def test_a_password_hash_that_is_no_hash_is_refused_naming_the_user(tmp_path):
    cfg = init_node(str(tmp_path / "n"), "Carol", p2p_address=("127.0.0.1", 13000),
                    rpc_address=("127.0.0.1", 13001), rpc_password="s3cret")
    path = os.path.join(cfg.base_dir, "node.toml")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    with open(path, "w", encoding="utf-8") as fh:   # the password itself, by mistake
        fh.write(text.replace(cfg.rpc_users[0].password_hash, "s3cret"))
    with pytest.raises(ConfigError, match=r"rpc_users\[0\] \(admin\): password_hash is not a "
                                          "password hash"):
        NodeConfig.load(cfg.base_dir)


def test_node_init_makes_one_directory_with_a_map_of_itself(tmp_path):
    cfg = init_node(str(tmp_path / "n"), "Carol", p2p_address=("127.0.0.1", 13000),
                    rpc_address=("127.0.0.1", 13001), rpc_password="s3cret")
    assert NodeConfig.load(str(tmp_path / "n")).p2p_address == ("127.0.0.1", 13000)
    assert check_password(cfg.rpc_users[0].password_hash, "s3cret")
    assert [i.name for i in NetworkMap.load(cfg.network_map_path)] == ["Carol"]


def test_a_malformed_config_names_the_file_and_field(tmp_path):
    (tmp_path / "node.toml").write_text('name = "A"\np2p_address = "nowhere"\nrpc_address = "x:1"\n')
    with pytest.raises(ConfigError, match="node.toml.*'nowhere' is not host:port"):
        NodeConfig.load(str(tmp_path))
    with pytest.raises(ConfigError, match="not a node directory"):
        NodeConfig.load(str(tmp_path / "missing"))


@pytest.mark.parametrize("nodes, words", [
    ([("A", "00", "nowhere")], "entry 0: address 'nowhere' is not host:port"),
    ([("A", "00", "h:1"), ("A", "01", "h:2")], "names 'A' twice"),
    ([("A", "00", "h:1"), ("B", "00", "h:2")], "'B' and 'A' share one public key"),
])
def test_a_bad_network_map_is_named_with_what_is_wrong(tmp_path, nodes, words):
    path = tmp_path / "network-map.json"
    path.write_text(json.dumps({"version": 1, "nodes": [
        {"name": n, "public_key": k * 32, "p2p_address": a} for n, k, a in nodes]}))
    with pytest.raises(NetworkMapError) as info:
        NetworkMap.load(str(path))
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


def test_a_network_map_entry_whose_notary_flag_is_no_bool_is_refused(tmp_path):
    """``"notary": "false"`` made that party a notary (bool("false") is True)."""
    path = tmp_path / "network-map.json"
    path.write_text(json.dumps({"version": 1, "nodes": [
        {"name": "A", "public_key": "00" * 32, "p2p_address": "h:1", "notary": "false"}]}))
    with pytest.raises(NetworkMapError, match=r"entry 0 is malformed .*notary is true or false, not 'false'"):
        NetworkMap.load(str(path))


@pytest.mark.parametrize("setting, says", [
    ('bogus_key = 1\n', "unknown setting(s) 'bogus_key' (known: apps, flows, limits"),
    ('max_resident = 10\n', "unknown setting(s) 'max_resident'"),
    ('network_map = 7\n', "`network_map` is the path of the network map file, found 7"),
    ('rpc_users = 5\n', "`rpc_users` is a list of [[rpc_users]] tables, found 5"),
])
def test_node_toml_settings_that_are_unknown_or_of_the_wrong_kind_are_refused_naming_them(
        tmp_path, setting, says):
    """A misspelt setting was ignored without a word; `rpc_users = 5` or `permissions = 5`
    said only "'int' object is not iterable", and "ALL" as a str was read letter by letter."""
    init_node(str(tmp_path / "n"), "Carol", p2p_address=("127.0.0.1", 13000),
              rpc_address=("127.0.0.1", 13001), rpc_password="s3cret")
    path = tmp_path / "n" / "node.toml"
    text = path.read_text()
    if setting.startswith("rpc_users"):
        text = text[:text.index("[[rpc_users]]")]
    text = re.sub(rf"(?m)^{setting.split()[0]} = .*$", "", text)   # given once
    path.write_text(setting + text)
    with pytest.raises(ConfigError) as info:
        NodeConfig.load(str(tmp_path / "n"))
    assert str(info.value).startswith(f"{path}: ") and says in str(info.value)


@pytest.mark.parametrize("permissions", ["5", '"ALL"', "[5]"])
def test_rpc_permissions_that_are_no_list_of_names_are_refused_naming_the_user(tmp_path, permissions):
    init_node(str(tmp_path / "n"), "Carol", p2p_address=("127.0.0.1", 13000),
              rpc_address=("127.0.0.1", 13001), rpc_password="s3cret")
    path = tmp_path / "n" / "node.toml"
    text = path.read_text()
    path.write_text(re.sub(r"(?m)^permissions = .*$", f"permissions = {permissions}", text))
    with pytest.raises(ConfigError, match=r"rpc_users\[0\] \(admin\): permissions is a list of names"):
        NodeConfig.load(str(tmp_path / "n"))


def test_a_misspelt_key_of_an_rpc_user_is_refused_not_read_as_every_permission(tmp_path):
    """`permisions = ["read"]` was passed over, and the user had the default: ALL."""
    init_node(str(tmp_path / "n"), "Carol", p2p_address=("127.0.0.1", 13000),
              rpc_address=("127.0.0.1", 13001), rpc_password="s3cret")
    path = tmp_path / "n" / "node.toml"
    text = path.read_text()
    path.write_text(re.sub(r"(?m)^permissions = .*$", 'permisions = ["read"]', text))
    with pytest.raises(ConfigError, match=r"rpc_users\[0\] \(admin\): unknown key\(s\) "
                                          r"'permisions' \(known: password_hash, permissions, "
                                          r"username\)"):
        NodeConfig.load(str(tmp_path / "n"))


def test_configuration_files_larger_than_any_real_one_are_refused_not_read_whole(tmp_path, monkeypatch):
    """A link to /dev/zero (or a runaway write) was read into memory without bound."""
    from greenflow.network import network_map as map_mod
    from greenflow.network import node_config as config_mod
    from greenflow.node.identity import read_node_name
    cfg = init_node(str(tmp_path / "n"), "Carol", p2p_address=("127.0.0.1", 13000),
                    rpc_address=("127.0.0.1", 13001), rpc_password="s3cret")
    monkeypatch.setattr(config_mod, "MAX_FILE_BYTES", 100)
    with pytest.raises(ConfigError, match="node.toml is larger than a node's configuration may be"):
        NodeConfig.load(cfg.base_dir)
    monkeypatch.setattr(map_mod, "MAX_MAP_CHARS", 10)
    with pytest.raises(NetworkMapError, match="network-map.json is larger than a network map may be"):
        NetworkMap.load(cfg.network_map_path)
    (tmp_path / "n" / "identity.name").write_text("x" * 5000)
    with pytest.raises(FlowError, match="identity.name does not hold a node name: it is longer"):
        read_node_name(str(tmp_path / "n"))


def test_a_network_map_or_identity_name_that_is_a_directory_is_named_as_such(tmp_path):
    """A map path naming a directory said only "[Errno 21] Is a directory: ..."; an
    identity.name that is a directory said the node directory had none."""
    from greenflow.node.identity import read_node_name
    (tmp_path / "map").mkdir()
    with pytest.raises(NetworkMapError, match=f"cannot read the network map {tmp_path / 'map'}: Is a directory"):
        NetworkMap.load(str(tmp_path / "map"))
    (tmp_path / "identity.name").mkdir()
    with pytest.raises(FlowError, match="cannot read .*identity.name, which holds the node's name: Is a directory"):
        read_node_name(str(tmp_path))


def test_free_ports_come_from_below_the_range_outgoing_connections_use():
    """A port from the kernel's ephemeral range can be taken by any outgoing connection
    before the node binds it ("Address already in use" under load); one below it cannot."""
    import socket

    from greenflow.network.bootstrap import _ephemeral_low, free_port
    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    if low is not None and low > 4096:
        assert all(1024 <= p < low for p in ports), (low, ports)
    for p in ports:   # each one free to listen on now
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
