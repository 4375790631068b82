"""JS-SDK signatures against WeChat's documented example."""

from __future__ import annotations

import pytest

from wxtokend.jssdk import jssdk_config, signature

# The example from WeChat's JS-SDK documentation (附录1-JS-SDK使用权限签名算法).
DOC_TICKET = (
    "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
)
DOC_NONCE = "Wm3WZYTPz0wzccnW"
DOC_TIMESTAMP = 1414587457
DOC_URL = "http://mp.weixin.qq.com?params=value"
DOC_SIGNATURE = "0f9de62fce790f9a083d5c99e95740ceb90c27ed"


class TestSignature:
    """The sha1 signature of wx.config."""

    def test_documented_example(self) -> None:
        """WeChat's own example values give WeChat's own signature."""
        got = signature(ticket=DOC_TICKET, nonce=DOC_NONCE, timestamp=DOC_TIMESTAMP, url=DOC_URL)
        assert got == DOC_SIGNATURE

    def test_fragment_is_not_signed(self) -> None:
        """The #fragment is dropped before signing, as the docs require."""
        config = jssdk_config(
            app_id="wx1",
            ticket=DOC_TICKET,
            url=DOC_URL + "#/cart?x=1",
            timestamp=DOC_TIMESTAMP,
            nonce=DOC_NONCE,
        )
        assert config == {
            "appId": "wx1",
            "timestamp": DOC_TIMESTAMP,
            "nonceStr": DOC_NONCE,
            "signature": DOC_SIGNATURE,
        }

    def test_random_nonce(self) -> None:
        """Without a nonce a fresh 16-character one is drawn each time."""
        a = jssdk_config(app_id="wx1", ticket="t", url="https://a.example/p", timestamp=1)
        b = jssdk_config(app_id="wx1", ticket="t", url="https://a.example/p", timestamp=1)
        assert a["nonceStr"] != b["nonceStr"]
        assert len(str(a["nonceStr"])) == 16
        assert str(a["nonceStr"]).isalnum()

    @pytest.mark.parametrize("url", ["/page", "mp.weixin.qq.com", "ftp://x/y", ""])
    def test_rejects_non_page_urls(self, url: str) -> None:
        """Only a full http(s) URL can be signed: WeChat compares it with the page's."""
        with pytest.raises(ValueError, match="full http"):
            jssdk_config(app_id="wx1", ticket="t", url=url, timestamp=1)
