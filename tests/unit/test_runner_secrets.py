"""The runner's side of ``environment_variable`` vault credentials (moorage_runner/runner.py): the
placeholders the service sends reach the CLI's environment without displacing the runner's own
variables, and the sandbox's egress CA is added to a trust bundle every TLS client is pointed at."""

from __future__ import annotations

from pathlib import Path

from moorage.channel import Start
from moorage.egress_ca import SessionCA
from moorage_runner import runner


def test_placeholders_are_names_only_and_never_displace_the_runners_variables() -> None:
    start = Start(
        {}, "unix:/m", env={"MY_TOKEN": "moorage-secret-x", "PATH": "p", "bad name": "v", "DISABLE_TELEMETRY": "0"}
    ).wire()
    assert runner.placeholders(start) == {"MY_TOKEN": "moorage-secret-x"}
    assert runner.placeholders({"env": ["MY_TOKEN"]}) == {}
    options = runner.build_options(start, "http://127.0.0.1:1", None, runner.placeholders(start))
    assert options.env["MY_TOKEN"] == "moorage-secret-x" and options.env["DISABLE_TELEMETRY"] == "1"
    assert options.env["ANTHROPIC_API_KEY"] == runner.PLACEHOLDER_API_KEY


def test_the_trust_bundle_holds_the_system_cas_and_the_sandboxs_own(tmp_path: Path) -> None:
    ca = SessionCA("t")
    start = Start({}, "unix:/m", egress_ca=ca.cert_pem).wire()
    assert start["egress_ca"] == ca.cert_pem and "PRIVATE" not in str(start)
    env = runner.trust_bundle(start["egress_ca"], tmp_path)
    bundle = Path(env["SSL_CERT_FILE"]).read_text()
    assert bundle.endswith(ca.cert_pem) and bundle.count("BEGIN CERTIFICATE") > 1  # the system's too
    assert env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"] == env["GIT_SSL_CAINFO"] == env["SSL_CERT_FILE"]
    assert Path(env["NODE_EXTRA_CA_CERTS"]).read_text() == ca.cert_pem  # Node adds it to its own roots
    assert Start({}, "unix:/m").wire().keys().isdisjoint({"env", "egress_ca"})
