"""TRANSITIONAL: flat read-only names for the modules being rewritten in parallel (issue 15).

``realtime/server.py`` and ``http_api/metrics.py`` still read ``settings.<flat>`` while other
branches rewrite them. Once those branches are merged, run ``settings_codemod.py`` on them
(``settings.max_frame_bytes`` -> ``settings.limits.max_frame_bytes``) and delete this module
and its base class in ``root.py``. Nothing new may use these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realtime.settings.groups import LimitsSettings, ObservabilitySettings, ServerSettings


class FlatAliases:
    """The flat names still read by ``realtime/server.py`` and ``http_api/metrics.py``."""

    __slots__ = ()
    if TYPE_CHECKING:
        server: ServerSettings
        limits: LimitsSettings
        observability: ObservabilitySettings

    @property
    def host(self) -> str:
        """``server.host``."""
        return self.server.host

    @property
    def environment(self) -> str:
        """``server.environment``."""
        return self.server.environment

    @property
    def client_ip_header(self) -> str:
        """``server.client_ip_header``."""
        return self.server.client_ip_header

    @property
    def http_head_timeout(self) -> float:
        """``server.http_head_timeout``."""
        return self.server.http_head_timeout

    @property
    def http_body_timeout(self) -> float:
        """``server.http_body_timeout``."""
        return self.server.http_body_timeout

    @property
    def http_keepalive_timeout(self) -> float:
        """``server.http_keepalive_timeout``."""
        return self.server.http_keepalive_timeout

    @property
    def listen_timeout(self) -> float:
        """``limits.listen_timeout``."""
        return self.limits.listen_timeout

    @property
    def idle_timeout(self) -> float:
        """``limits.idle_timeout``."""
        return self.limits.idle_timeout

    @property
    def max_topics_per_connection(self) -> int:
        """``limits.max_topics_per_connection``."""
        return self.limits.max_topics_per_connection

    @property
    def listen_rate(self) -> float:
        """``limits.listen_rate``."""
        return self.limits.listen_rate

    @property
    def listen_burst(self) -> int:
        """``limits.listen_burst``."""
        return self.limits.listen_burst

    @property
    def max_pending_per_ip(self) -> int:
        """``limits.max_pending_per_ip``."""
        return self.limits.max_pending_per_ip

    @property
    def max_frame_bytes(self) -> int:
        """``limits.max_frame_bytes``."""
        return self.limits.max_frame_bytes

    @property
    def send_queue_max_bytes(self) -> int:
        """``limits.send_queue_max_bytes``."""
        return self.limits.send_queue_max_bytes

    @property
    def send_queue_max_messages(self) -> int:
        """``limits.send_queue_max_messages``."""
        return self.limits.send_queue_max_messages

    @property
    def metrics_enabled(self) -> bool:
        """``observability.metrics_enabled``."""
        return self.observability.metrics_enabled

    @property
    def metrics_port(self) -> int:
        """``observability.metrics_port``."""
        return self.observability.metrics_port

    @property
    def metrics_probe_interval(self) -> float:
        """``observability.metrics_probe_interval``."""
        return self.observability.metrics_probe_interval
