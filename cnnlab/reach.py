"""What a dashboard visitor may make the server reach, and how URLs are shown.

A dashboard visitor is not the server's owner: the dashboard turns on the visitor rules for its own
process and the jobs it starts (`enable_visitor_rules`, an environment variable, so job and child
processes inherit it). Under them a weights URL must name a host in CNNLAB_WEIGHTS_HOSTS (default:
torchvision's and Hugging Face's hosts plus the CNNLAB_WEIGHTS_MIRROR host), redirects must stay on
that list, and a failed download says the same whatever the reason (no port scanning). The CLI
runs as its user and is not restricted. Secrets in URLs (passwords, query values such as
X-Amz-Signature) are redacted wherever a URL is stored, shown or printed (`redact_url`).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from .errors import WeightsError

DASHBOARD_ENV = "CNNLAB_DASHBOARD"  # "1" in the dashboard's process and the jobs it starts
HOSTS_ENV = "CNNLAB_WEIGHTS_HOSTS"  # comma/space separated host names; "*.example.org" wildcards
DEFAULT_HOSTS = (
    "download.pytorch.org",
    "huggingface.co",
    "*.huggingface.co",  # cdn-lfs.huggingface.co: where Hugging Face redirects file downloads
    "*.hf.co",  # cas-bridge.xethub.hf.co and friends
)
REDACTED = "***"


def visitor_rules() -> bool:
    """True in the dashboard's process (and its jobs): requests come from visitors, not the owner."""
    return os.environ.get(DASHBOARD_ENV, "") == "1"


def enable_visitor_rules() -> None:
    """Apply the visitor rules to this process and every job or child process it starts."""
    os.environ[DASHBOARD_ENV] = "1"


def weights_hosts() -> tuple[str, ...]:
    """The hosts a visitor's weights URL (and its redirects) may name, lower case."""
    raw = os.environ.get(HOSTS_ENV, "")
    hosts = [h.strip().lower() for h in raw.replace(",", " ").split() if h.strip()]
    if not hosts:
        hosts = list(DEFAULT_HOSTS)
    mirror = os.environ.get("CNNLAB_WEIGHTS_MIRROR", "").strip()
    if mirror and urlparse(mirror).hostname:
        hosts.append(urlparse(mirror).hostname.lower())
    return tuple(hosts)


def host_allowed(url: str, hosts: tuple[str, ...] | None = None) -> bool:
    """True when url is http(s) and its host is on the list (an entry "*.a.b" matches x.a.b)."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    if parsed.scheme not in ("http", "https") or not host:
        return False
    for entry in hosts if hosts is not None else weights_hosts():
        if entry == host or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def check_weights_url(url: str) -> None:
    """Under the visitor rules, refuse a weights URL whose host the operator did not allow."""
    if visitor_rules() and not host_allowed(url):
        raise WeightsError(
            f"weights URL {redact_url(url)} is not on this server's list of weights hosts "
            f"({', '.join(weights_hosts())}); ask the operator to add its host to {HOSTS_ENV}, or "
            "upload the .pth file instead"
        )


def redact_url(url: str) -> str:
    """url with its password and every query value replaced by ***; other text unchanged."""
    try:
        parsed = urlparse(url)
        netloc = parsed.netloc
    except ValueError:
        return url
    if not parsed.scheme or not netloc:
        return url
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{REDACTED}@{hostport}"
    query = parsed.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED) for k, _ in pairs], safe="*") if pairs else REDACTED
    fragment = REDACTED if parsed.fragment else ""
    return urlunparse(parsed._replace(netloc=netloc, query=query, fragment=fragment))


def redact_config(config: dict) -> dict:
    """A RunConfig dict with its weights URL redacted, for config.json, checkpoints, sessions."""
    model = config.get("model")
    if isinstance(model, dict) and isinstance(model.get("weights"), str):
        config = {**config, "model": {**model, "weights": redact_url(model["weights"])}}
    return config


def redact_text(text: str, url: str) -> str:
    """text with every occurrence of url replaced by its redacted form (errors echo URLs)."""
    return text.replace(url, redact_url(url)) if url else text
