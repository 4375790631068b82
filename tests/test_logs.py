"""Log lines as journald and people see them."""

from __future__ import annotations

import io
import json

from wxtokend import logs


class TestJsonLines:
    """JSON log lines keep non-ASCII text readable."""

    def test_chinese_hint_is_utf8(self) -> None:
        """A hint quoting the console's Chinese menu appears as UTF-8, not \\u escapes."""
        stream = io.StringIO()
        logs.configure(stream=stream, json=True)
        logs.get_logger().error("refresh", hint="设置与开发 → 基本配置 → IP白名单")
        line = stream.getvalue().strip()
        assert "设置与开发 → 基本配置 → IP白名单" in line
        assert "\\u" not in line
        assert json.loads(line)["hint"] == "设置与开发 → 基本配置 → IP白名单"

    def test_non_utf8_stream_escapes_instead_of_failing(self) -> None:
        """On a stream that cannot encode Chinese, the line is escaped, never an exception."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="ascii")
        logs.configure(stream=stream, json=True)
        logs.get_logger().error("refresh", hint="IP白名单")
        stream.flush()
        assert b"IP\\u767d" in raw.getvalue()
