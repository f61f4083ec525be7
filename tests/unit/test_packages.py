"""Environment packages without I/O (packages.py): which requirements may reach pip on the host,
what a layer's key depends on, the one pip command, and how a layer reaches a sandbox (local and
Docker) and the agent's commands but never the runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from moorage.bodies import BodyError
from moorage.packages import (
    MAX_PACKAGES,
    layer_key,
    npm_argv,
    npm_packages,
    packages_not_supported,
    pip_argv,
    pip_requirements,
    sandbox_layer_problem,
    script_for_sandbox,
    wanted,
)
from moorage.sandbox.base import SandboxSpec
from moorage.sandbox.cgroups import Limits
from moorage.sandbox.docker import RUNNER_CMD, container_config
from moorage.sandbox.local import Runtime, bwrap_argv
from moorage_runner.runner import agent_pythonpath

LAYER = Path("/root/.cache/moorage/packages/0123456789abcdef")


def test_requirements_are_normalised_sorted_and_deduplicated() -> None:
    got = pip_requirements(
        ["tabulate == 0.9.0", "Six", "requests[socks]>=2,<3", "six ; python_version>'3'", "Six"], "p"
    )
    assert got == ["Six", "requests[socks]<3,>=2", 'six; python_version > "3"', "tabulate==0.9.0"]


@pytest.mark.parametrize(
    "raw",
    [
        "--index-url=http://evil.example/simple",  # an option: pip would take it
        "-r/etc/shadow",
        "pkg @ https://evil.example/pkg.whl",  # a direct reference
        "pkg @ file:///root/.ssh/id_rsa",
        "./local/path",
        "pkg\n--extra-index-url http://evil.example",
        "",
        "x" * 201,
        42,
    ],
)
def test_what_is_not_a_plain_requirement_never_reaches_pip(raw: object) -> None:
    with pytest.raises(BodyError) as caught:
        pip_requirements([raw], "config.packages.pip")
    assert "config.packages.pip[0]" in caught.value.message


def test_a_list_too_long_is_refused() -> None:
    with pytest.raises(BodyError, match="more than"):
        pip_requirements([f"p{n}" for n in range(MAX_PACKAGES + 1)], "config.packages.pip")


def test_a_layer_key_names_everything_that_decides_its_content_and_nothing_else() -> None:
    key = layer_key("toolbox abc", "", ["a==1", "b"])
    assert key == layer_key("toolbox abc", "", ["b", "a==1"])  # order does not matter
    others = {
        layer_key("toolbox abd", "", ["a==1", "b"]),  # another toolbox under it
        layer_key("toolbox abc", "https://mirror.example/simple", ["a==1", "b"]),  # another index
        layer_key("toolbox abc", "", ["a==2", "b"]),
        layer_key("toolbox abc", "", ["a==1"]),
    }
    assert key not in others and len(others) == 4


def test_pip_installs_wheels_only_over_the_toolbox_and_no_requirement_is_read_as_an_option() -> None:
    argv = pip_argv("/tb/bin/python3", Path("/cache/.k.tmp"), ["a==1", "b"], "https://mirror.example/simple")
    assert argv[:3] == ["/tb/bin/python3", "-m", "pip"]
    assert "--only-binary=:all:" in argv  # no sdist: no setup.py runs on the host
    assert argv[argv.index("--prefix") + 1] == "/cache/.k.tmp"  # over the toolbox, not --target
    assert argv[argv.index("--index-url") + 1] == "https://mirror.example/simple"
    assert argv[-3:] == ["--", "a==1", "b"]
    assert "--index-url" not in pip_argv("p", Path("/x"), ["a"], "")  # pip's own configuration


def test_console_scripts_run_on_the_sandboxs_python() -> None:
    script = b"#!/root/.cache/moorage/toolbox/k/bin/python3\nimport sys\nfrom tabulate import _main\n"
    assert script_for_sandbox(script) == b"#!/usr/bin/env python3\nimport sys\nfrom tabulate import _main\n"
    assert script_for_sandbox(b"\x7fELF\0\0") is None
    assert script_for_sandbox(b"#!/bin/sh\necho hi\n") is None


def test_which_backends_mount_layers() -> None:
    assert sandbox_layer_problem("local") is None and sandbox_layer_problem("docker") is None
    assert "bake them into the sandbox image" in (sandbox_layer_problem("kubernetes") or "")
    refusal = packages_not_supported("kubernetes")
    assert refusal is not None and refusal.code == "packages_not_supported"


def test_an_environment_without_packages_wants_no_layer() -> None:
    assert wanted(None) == [] and wanted({"config": {"packages": {"pip": [], "npm": []}}}) == []
    assert wanted({"config": {"packages": {"pip": ["six"], "npm": ["is-number@7"]}}}) == ["npm:is-number@7", "pip:six"]


@pytest.mark.parametrize(
    "raw",
    [
        "git+https://github.com/x/y.git",
        "https://evil.example/x.tgz",
        "file:../../root/.ssh",
        "x@npm:evil",  # an alias
        "user/repo",  # a GitHub shorthand
        "x@git+ssh://evil/x",
        "--registry=http://evil.example",
        "Prettier",  # npm names are lower case
        "",
    ],
)
def test_what_is_not_a_registry_package_never_reaches_npm(raw: str) -> None:
    with pytest.raises(BodyError) as caught:
        npm_packages([raw], "config.packages.npm")
    assert "config.packages.npm[0]" in caught.value.message


def test_npm_packages_name_the_registry_only_and_run_no_scripts() -> None:
    assert npm_packages(["prettier@^3.3", "@types/node@20", "is-number", "is-number"], "n") == [
        "@types/node@20",
        "is-number",
        "prettier@^3.3",
    ]
    argv = npm_argv("/usr/bin/npm", Path("/cache/.k.tmp/node"), ["is-number@7"], "https://npm.mirror.example/")
    assert "--ignore-scripts" in argv  # an install script would run on the host
    assert argv[argv.index("--registry") + 1] == "https://npm.mirror.example/"
    assert argv[-2:] == ["--", "is-number@7"]


def test_npm_layers_need_a_node_in_the_sandbox() -> None:
    assert sandbox_layer_problem("local", ["npm:is-number"]) is None  # the host's node, under /usr
    assert "no Node.js" in (sandbox_layer_problem("docker", ["npm:is-number"]) or "")
    assert sandbox_layer_problem("docker", ["pip:six"]) is None


def spec(packages: Path | None) -> SandboxSpec:
    return SandboxSpec("s", "sb", Path("/state/workspaces/sb"), Path("/state/m.sock"), packages=packages)


def setenv(args: list[str]) -> dict[str, str]:
    return {args[i + 1]: args[i + 2] for i, a in enumerate(args) if a == "--setenv"}


@pytest.mark.parametrize("uid", [200_123, None])
def test_a_local_sandbox_mounts_the_layer_read_only_first_on_path(uid: int | None) -> None:
    runtime = Runtime("/srv/venv/bin/python", "/srv/venv", "/usr", "/srv/src/moorage_runner")
    toolbox = Path("/root/.cache/moorage/toolbox/k")
    args = bwrap_argv(spec(LAYER), runtime, uid, Path("/state/etc"), toolbox=toolbox)
    sandbox = args[len(args) - args[::-1].index("bwrap") :]
    targets = {sandbox[i + 2]: (a, sandbox[i + 1]) for i, a in enumerate(sandbox) if a in ("--bind", "--ro-bind")}
    assert targets["/opt/moorage/packages"][0] == "--ro-bind"
    assert str(LAYER) in args  # staged as root, or bound directly
    env = setenv(args)
    assert env["PATH"] == (
        "/opt/moorage/packages/bin:/opt/moorage/packages/node/node_modules/.bin:/opt/moorage/toolbox/bin:"
        "/usr/local/bin:/usr/bin:/bin"
    )
    assert env["NODE_PATH"] == "/opt/moorage/packages/node/node_modules"
    assert env["MOORAGE_AGENT_PYTHONPATH"] == "/opt/moorage/packages/site-packages"
    assert env["PYTHONPATH"] == "/opt/moorage/lib"  # the runner's own imports are untouched
    assert args[-3:] == ["/opt/moorage/venv/bin/python", "-m", "moorage_runner"]
    plain = setenv(bwrap_argv(spec(None), runtime, uid, Path("/state/etc"), toolbox=toolbox))
    assert "MOORAGE_AGENT_PYTHONPATH" not in plain and not plain["PATH"].startswith("/opt/moorage/packages")


def test_a_docker_sandbox_mounts_the_layer_read_only_and_runs_its_runner_by_full_path() -> None:
    config = container_config(spec(LAYER), "img", Limits(1 << 30, 64, 1.0), "owner")
    mounts = {m["Target"]: m for m in config["HostConfig"]["Mounts"]}
    assert mounts["/opt/moorage/packages"] == {
        "Type": "bind",
        "Source": str(LAYER),
        "Target": "/opt/moorage/packages",
        "ReadOnly": True,
    }
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/moorage/packages/bin:/opt/moorage/packages/node/node_modules/.bin:")
    assert env["PATH"].endswith(":/opt/moorage/venv/bin:/usr/local/bin:/usr/bin:/bin")
    assert env["MOORAGE_AGENT_PYTHONPATH"] == "/opt/moorage/packages/site-packages"
    # A layer's bin/ may hold a "python": the runner is not found through PATH.
    assert config["Cmd"] == RUNNER_CMD and RUNNER_CMD[0] == "/opt/moorage/venv/bin/python"
    plain = container_config(spec(None), "img", Limits(1 << 30, 64, 1.0), "owner")
    assert "/opt/moorage/packages" not in {m["Target"] for m in plain["HostConfig"]["Mounts"]}
    assert not any(item.startswith(("PATH=", "MOORAGE_AGENT_PYTHONPATH=", "NODE_PATH=")) for item in plain["Env"])


def test_the_runner_gives_the_layer_to_the_agents_commands_only() -> None:
    assert agent_pythonpath({"MOORAGE_AGENT_PYTHONPATH": "/opt/moorage/packages/site-packages"}) == {
        "PYTHONPATH": "/opt/moorage/packages/site-packages"
    }
    assert agent_pythonpath({"PYTHONPATH": "/opt/moorage/lib"}) == {}
