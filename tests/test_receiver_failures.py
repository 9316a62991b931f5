"""A receiver failure says what failed (DNS, refused, TLS, HTTP status) and masks only secrets.

Real failures, through ``knotify test-alert`` (the real sender subprocess and apprise):
a name that does not resolve (``.invalid`` never does), a port nobody listens on, TLS
spoken to a plain HTTP server, an HTTP server answering 500. The password of each URL
must not show; host names and e-mail addresses, which are not secret, must.
"""

from __future__ import annotations

from alert_servers import PASSWORD, HttpSink, free_port
from conftest import KEnv

from knotify.alerts.failure import cause, explain, low_level
from knotify.alerts.redact import scrub, secret_tokens


def test_each_kind_of_failure_is_named(kenv: KEnv) -> None:
    sink = HttpSink(behaviour={"/fail": "fail"}).start()
    dead = free_port()
    try:
        kenv.write_config(f"""
[receivers.dns]
urls = ["json://ops:{PASSWORD}@hooks.example.invalid/notify"]
[receivers.refused]
urls = ["json://ops:{PASSWORD}@127.0.0.1:{dead}/notify"]
[receivers.tls]
urls = ["jsons://ops:{PASSWORD}@127.0.0.1:{sink.port}/notify"]
[receivers.http]
urls = ["{sink.url('/fail', auth='ops:' + PASSWORD)}"]
[receivers.mail]
urls = ["mailto://alerts:{PASSWORD}@smtp.example.invalid?to=oncall@example.invalid&from=knotify@example.invalid"]
""")
        expected = {
            "dns": ("DNS lookup failed", "hooks.example.invalid"),
            "refused": ("connection refused", f"127.0.0.1:{dead}"),
            "tls": ("TLS handshake failed", "SSL"),
            "http": ("HTTP 500", "/fail"),
            "mail": ("DNS lookup failed", "smtp.example.invalid"),
        }
        for receiver, (what, shown) in expected.items():
            proc = kenv.cli("test-alert", receiver, check=False, timeout=120)
            out = proc.stdout + proc.stderr
            failed = [ln for ln in out.splitlines() if "FAILED" in ln]
            assert proc.returncode == 1 and failed, (receiver, out)
            assert f": {what}" in failed[0], (receiver, failed)
            assert shown in failed[0], (receiver, failed)
            assert PASSWORD not in out and "****" in out, (receiver, out)
        assert any(r.path == "/fail" for r in sink.started)  # the server was reached
    finally:
        sink.stop()


def test_causes_from_apprise_lines() -> None:
    assert cause("Socket Exception: ... NameResolutionError(... [Errno -2] Name or service "
                 "not known)") == "DNS lookup failed"
    assert cause("[Errno -3] Temporary failure in name resolution") == "DNS lookup failed"
    assert cause("Failed to establish a new connection: [Errno 111] Connection refused") \
        == "connection refused"
    assert cause("SSLError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")\
        == "TLS handshake failed"
    assert cause("Failed to send JSON POST notification: Gateway timeout., error=504.") \
        == "HTTP 504"
    assert cause("Read timed out. (read timeout=4)") == "timed out"
    assert cause("(535, b'5.7.8 Authentication failed')") == "authentication failed"
    assert cause("something else entirely") == ""
    assert low_level("...(Caused by NewConnectionError(\"HTTPConnection(host='h', port=9): "
                     "Failed to establish a new connection: [Errno 111] Connection refused\"))") \
        == "[Errno 111] Connection refused"
    text = explain(["A Connection error occurred sending JSON notification to h."],
                   ["Socket Exception: ... [Errno 111] Connection refused\"))"])
    assert text == ("connection refused: A Connection error occurred sending JSON "
                    "notification to h. ([Errno 111] Connection refused)")


def test_only_secrets_are_masked() -> None:
    raw = ("mailtos://alerts:Pw-s3cret-Xy7q@smtp.example.net?to=oncall@example.net"
           "&from=knotify@example.net")
    privacy = ("mailtos://alerts:****@smtp.example.net/oncall%40example.net?mode=starttls"
               "&from=knotify%40example.net")
    secrets = secret_tokens(raw, privacy)
    assert "Pw-s3cret-Xy7q" in secrets
    assert not secrets & {"example.net", "oncall", "oncall@example.net", "knotify@example.net",
                          "smtp.example.net"}, secrets
    text = 'Connection error while submitting email to "smtp.example.net" for oncall@example.net'
    assert scrub(text, secrets) == text
    header = secret_tokens("json://h.example/x?:X-Api-Key=abcdefgh12345678",
                           "json://h.example/x?method=POST&%3AX-Api-Key=abcdefgh12345678")
    assert "abcdefgh12345678" in header
